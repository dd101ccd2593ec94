"""The worker program pull and push workers share: a process pool behind a DEALER socket,
heartbeats from the main process (never from a child running user code), and reconnection
with back-off when the dispatcher goes quiet (Paranoid Pirate worker shape).

Pull workers ask for work (a REQUEST per free process); push workers register their
process count and are sent work. Nothing here imports Django.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import deque

import zmq

from workers import environment, protocol
from workers.pool import ProcessPool
from workers.recycling import ChildLimits
from workers.serialization import DEFAULT_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

SHUTDOWN_LINGER_MS = 1000  # how long a stopping worker lets ZeroMQ flush its last results
MAX_UNCONFIRMED_BYTES = 64 * 1024 * 1024  # results kept for sending again after a reconnect


class Liveness:
    """When the dispatcher counts as gone, and how long to wait before reconnecting.

    The wait doubles from `initial` to `cap`, each one drawn between half and all of the
    current step (jitter: workers that lost the same dispatcher do not all come back in the
    same instant), and starts over only when the dispatcher answers: opening a socket proves
    nothing, so a worker that cannot reach its dispatcher backs off instead of hammering it.
    Pure: every method takes `now`, and the random source is injectable.
    """

    def __init__(self, interval: float, liveness: int, *, initial: float = protocol.RECONNECT_INTERVAL_INIT,
                 cap: float = protocol.RECONNECT_INTERVAL_MAX, rand=random.random):
        self.ttl = interval * liveness
        self.expiry = 0.0
        self.initial = initial
        self.cap = cap
        self.rand = rand
        self.step = initial

    def connected(self, now: float) -> None:
        """A new socket: the dispatcher has a full ttl to answer on it."""
        self.expiry = now + self.ttl

    def heard(self, now: float) -> None:
        """A message from the dispatcher: it is alive, and the back-off starts over."""
        self.expiry = now + self.ttl
        self.step = self.initial

    def lost(self, now: float) -> bool:
        return now >= self.expiry

    def next_backoff(self) -> float:
        wait = self.step * (0.5 + 0.5 * self.rand())
        self.step = min(self.step * 2, self.cap)
        return wait


class Unconfirmed:
    """Results sent to the dispatcher that it may not have recorded yet.

    ZeroMQ drops what is queued on a closed socket, and a dispatcher killed with results in
    its buffers never records them. A result counts as recorded once the dispatcher has gone
    on answering for a whole liveness ttl after it was sent (it reads its socket far more
    often); until then a re-registration reports its task as held and sends it again. The
    dispatcher keeps the first final state of a task, so a result sent twice is harmless.
    Memory is capped at `max_bytes` of results: past it, the oldest count as recorded.
    """

    def __init__(self, ttl: float, max_bytes: int = MAX_UNCONFIRMED_BYTES):
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0
        self.batches: deque[tuple[float, tuple[protocol.Result, ...], int]] = deque()

    def add(self, now: float, results: tuple[protocol.Result, ...]) -> None:
        size = sum(len(r.result) for r in results)
        self.batches.append((now, results, size))
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.batches) > 1:
            self.bytes -= self.batches.popleft()[2]

    def confirm(self, now: float) -> None:
        """The dispatcher answered at `now`: what was sent a ttl before is recorded."""
        while self.batches and self.batches[0][0] <= now - self.ttl:
            self.bytes -= self.batches.popleft()[2]

    def results(self) -> tuple[protocol.Result, ...]:
        return tuple(r for _, batch, _ in self.batches for r in batch)

    def __len__(self) -> int:
        return sum(len(batch) for _, batch, _ in self.batches)


class RemoteWorker:
    def __init__(self, mode: str, processes: int, endpoint: str, *, keys_dir: str | None = None,
                 key_name: str = "worker",
                 heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = protocol.HEARTBEAT_LIVENESS,
                 max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, limits: ChildLimits | None = None,
                 clock=time.monotonic):
        self.mode = mode
        self.processes = processes
        self.endpoint = endpoint
        self.keys_dir = keys_dir
        self.key_name = key_name
        self.interval = heartbeat_interval
        self.liveness = Liveness(heartbeat_interval, heartbeat_liveness)
        self.clock = clock
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}".encode()
        self.pool = ProcessPool(processes, max_result_bytes=max_result_bytes, limits=limits)
        self.backlog: deque[protocol.Task] = deque()  # sent to us while every process was busy
        self.unconfirmed = Unconfirmed(self.liveness.ttl)
        self.reconnect_at: float | None = None  # the dispatcher went silent: when to try a new socket
        self.stopping = False
        self.stopped = False
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self.next_heartbeat = 0.0

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        self._install_signals()
        self.pool.start()
        self.context = zmq.Context()  # after the pool's children exist: they never inherit it
        try:
            self.connect()
            while not self.stopped:
                self.loop()
        finally:
            self.shutdown()

    def _install_signals(self) -> None:
        def handler(signum, frame):  # only set flags: the loop acts
            if self.stopping:
                self.stopped = True
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def shutdown(self) -> None:
        if self.socket is not None:
            busy = self.pool.busy + len(self.backlog)
            self.send(protocol.Disconnect(protocol.CLEAN_GOODBYE if not busy
                                          else f"worker stopped with {busy} task(s) unfinished"))
            # A moment to flush: the last results may still sit in ZeroMQ's queue.
            self.socket.close(linger=SHUTDOWN_LINGER_MS)
        self.pool.close()
        if self.context is not None:
            self.context.term()
        log.info("worker %s stopped", self.identity.decode())

    def connect(self) -> None:
        """A fresh socket (a ZeroMQ socket cannot be reset), then say who we are and what we hold.

        What the dispatcher sent to the old socket is read before it closes. The registration's
        `holding` is the whole truth: tasks running, waiting in the backlog, and finished but
        not confirmed (their results follow at once). A task the dispatcher sent that is not in
        it never reached this worker, so it has not run and can be queued again."""
        if self.socket is not None:
            self.drain()
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IDENTITY, self.identity)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        if self.keys_dir:
            from workers.security import secure_client

            secure_client(self.socket, self.keys_dir, self.key_name)
        self.socket.connect(self.endpoint)
        finished = self.unconfirmed.results()
        holding = tuple(dict.fromkeys([*self.pool.holding(), *(t.task_id for t in self.backlog),
                                       *(r.task_id for r in finished)]))
        info = protocol.WorkerInfo(self.processes, socket.gethostname(), os.getpid(), holding=holding,
                                   **environment.describe())
        free = 0 if self.stopping else self.pool.free - len(self.backlog)
        self.send(protocol.Request(max(0, free), info) if self.mode == "pull" else protocol.Register(info))
        if finished:  # free=0: the registration above already counted every free process
            self.send(protocol.Results(finished, free=0))
        self.reconnect_at = None
        self.liveness.connected(self.clock())
        log.info("%s worker %s connected to %s with %d processes (holding %d task(s), %d result(s) to confirm)",
                 self.mode, self.identity.decode(), self.endpoint, self.processes, len(holding), len(finished))

    def drain(self) -> None:
        """Take what already reached the socket we are about to close: tasks and cancels."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed message from the dispatcher: %s", exc)
                continue
            if not isinstance(message, protocol.Disconnect):  # we are registering again anyway
                self.handle(message)

    def send(self, message) -> None:
        try:
            self.socket.send_multipart(protocol.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dispatcher not reachable; dropped %s", type(message).__name__)

    # --- one iteration -------------------------------------------------------------------

    def loop(self) -> None:
        now = self.clock()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        for fd in self.pool.fds():
            poller.register(fd, zmq.POLLIN)
        wake = min(t for t in (self.next_heartbeat, self.pool.next_deadline(), self.reconnect_at) if t is not None)
        events = dict(poller.poll(max(0, int((wake - now) * 1000)) + 1))
        now = self.clock()
        if self.socket in events:
            self.receive(now)
        self.finish_results(now)
        self.start_backlog()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.interval
            self.send(protocol.Heartbeat(self.pool.busy))
        if self.stopping and not self.pool.busy and not self.backlog:
            self.stopped = True
        elif self.reconnect_at is not None:
            if now >= self.reconnect_at:
                self.connect()
        elif self.liveness.lost(now):
            self.schedule_reconnect(now)

    def schedule_reconnect(self, now: float) -> None:
        """Keep serving, and reading this socket, while we wait: a dispatcher that comes back
        meanwhile may already be sending us work on it, and any answer calls the reconnect off."""
        wait = self.liveness.next_backoff()
        self.reconnect_at = now + wait
        log.warning("no word from the dispatcher for %.1f s; reconnecting in %.1f s", self.liveness.ttl, wait)

    def receive(self, now: float) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.heard(now)
            try:
                message = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed message from the dispatcher: %s", exc)
                continue
            self.handle(message)

    def heard(self, now: float) -> None:
        if self.reconnect_at is not None:
            log.info("the dispatcher answered; staying on this connection")
            self.reconnect_at = None
        self.liveness.heard(now)
        self.unconfirmed.confirm(now)

    def handle(self, message) -> None:
        match message:
            case protocol.Tasks(tasks):
                self.backlog.extend(tasks)
                self.start_backlog()
            case protocol.Cancel(task_ids):
                for task_id in task_ids:
                    self.cancel(task_id)
            case protocol.Disconnect(reason):
                log.info("dispatcher asked us to reconnect: %s", reason)
                self.connect()
            case protocol.Heartbeat():
                pass
            case _:
                log.warning("unexpected %s from the dispatcher", type(message).__name__)

    def cancel(self, task_id: str) -> None:
        if not self.pool.cancel(task_id):
            self.backlog = deque(t for t in self.backlog if t.task_id != task_id)

    def start_backlog(self) -> None:
        while self.backlog and self.pool.free:
            self.pool.submit(self.backlog.popleft())

    def finish_results(self, now: float) -> None:
        results = tuple(self.pool.collect())
        reports = self.pool.take_progress()
        if reports:  # before the results: a report never overtakes its task's end
            self.send(protocol.Progress(tuple((t, f, m) for t, (f, m) in reports.items())))
        if results:
            # Each finished task frees a process: in pull mode that is a request for one more.
            free = 0 if self.stopping else len(results)
            self.unconfirmed.add(now, results)
            self.send(protocol.Results(results, free=free))


def main(mode: str, argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m workers.{mode}_worker",
                                     description=f"Run a {mode} worker with N processes.")
    parser.add_argument("processes", type=int, help="number of worker processes")
    parser.add_argument("endpoint", help="dispatcher address, e.g. tcp://127.0.0.1:7001")
    parser.add_argument("--keys", dest="keys_dir", default=None,
                        help="CURVE key directory: server.key and workers/NAME.key_secret")
    parser.add_argument("--key-name", default="worker", help="NAME of this worker's keypair (default: worker)")
    parser.add_argument("--heartbeat-interval", type=float, default=protocol.HEARTBEAT_INTERVAL)
    parser.add_argument("--heartbeat-liveness", type=int, default=protocol.HEARTBEAT_LIVENESS)
    parser.add_argument("--max-result-bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES)
    parser.add_argument("--max-tasks-per-child", type=int, default=None,
                        help="replace a process after this many tasks")
    parser.add_argument("--max-memory-per-child", type=int, default=None,
                        help="replace a process whose resident memory passed this many KiB (after its task)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("processes must be at least 1")
    try:
        limits = ChildLimits(args.max_tasks_per_child, args.max_memory_per_child)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=os.environ.get("FAAS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    RemoteWorker(mode, args.processes, args.endpoint, keys_dir=args.keys_dir, key_name=args.key_name,
                 heartbeat_interval=args.heartbeat_interval, heartbeat_liveness=args.heartbeat_liveness,
                 max_result_bytes=args.max_result_bytes, limits=limits).run()
    return 0
