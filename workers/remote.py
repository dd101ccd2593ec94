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
import signal
import socket
import time
import uuid
from collections import deque

import zmq

from workers import protocol
from workers.pool import ProcessPool
from workers.serialization import DEFAULT_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)


class Liveness:
    """When the dispatcher counts as gone, and how long to wait before reconnecting."""

    def __init__(self, interval: float, liveness: int):
        self.ttl = interval * liveness
        self.expiry = 0.0
        self.backoff = protocol.RECONNECT_INTERVAL_INIT

    def heard(self, now: float) -> None:
        self.expiry = now + self.ttl
        self.backoff = protocol.RECONNECT_INTERVAL_INIT

    def lost(self, now: float) -> bool:
        return now >= self.expiry

    def next_backoff(self) -> float:
        wait, self.backoff = self.backoff, min(self.backoff * 2, protocol.RECONNECT_INTERVAL_MAX)
        return wait


class RemoteWorker:
    def __init__(self, mode: str, processes: int, endpoint: str, *, keys_dir: str | None = None,
                 key_name: str = "worker",
                 heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = protocol.HEARTBEAT_LIVENESS,
                 max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, clock=time.monotonic):
        self.mode = mode
        self.processes = processes
        self.endpoint = endpoint
        self.keys_dir = keys_dir
        self.key_name = key_name
        self.interval = heartbeat_interval
        self.liveness = Liveness(heartbeat_interval, heartbeat_liveness)
        self.clock = clock
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}".encode()
        self.pool = ProcessPool(processes, max_result_bytes=max_result_bytes)
        self.backlog: deque[protocol.Task] = deque()  # sent to us while every process was busy
        self.unsent: list[protocol.Result] = []  # finished while we had no dispatcher
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
            self.send(protocol.Disconnect("worker stopping"))
            self.socket.close(linger=0)
        self.pool.close()
        if self.context is not None:
            self.context.term()
        log.info("worker %s stopped", self.identity.decode())

    def connect(self) -> None:
        """A fresh socket (a ZeroMQ socket cannot be reset), then say who we are."""
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IDENTITY, self.identity)
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        if self.keys_dir:
            from workers.security import secure_client

            secure_client(self.socket, self.keys_dir, self.key_name)
        self.socket.connect(self.endpoint)
        holding = tuple(self.pool.holding()) + tuple(t.task_id for t in self.backlog)
        info = protocol.WorkerInfo(self.processes, socket.gethostname(), os.getpid(), holding=holding)
        free = 0 if self.stopping else self.pool.free - len(self.backlog)
        self.send(protocol.Request(max(0, free), info) if self.mode == "pull" else protocol.Register(info))
        if self.unsent:
            self.send(protocol.Results(tuple(self.unsent), free=0 if self.stopping else len(self.unsent)))
            self.unsent = []
        self.liveness.heard(self.clock())
        log.info("%s worker %s connected to %s with %d processes", self.mode, self.identity.decode(),
                 self.endpoint, self.processes)

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
        wake = min(self.next_heartbeat, self.pool.next_deadline() or self.next_heartbeat)
        events = dict(poller.poll(max(0, int((wake - now) * 1000)) + 1))
        now = self.clock()
        if self.socket in events:
            self.receive(now)
        self.finish_results()
        self.start_backlog()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.interval
            self.send(protocol.Heartbeat(self.pool.busy))
        if self.stopping and not self.pool.busy and not self.backlog:
            self.stopped = True
        elif self.liveness.lost(now):
            self.reconnect()

    def receive(self, now: float) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.liveness.heard(now)
            try:
                message = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed message from the dispatcher: %s", exc)
                continue
            self.handle(message)

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

    def finish_results(self) -> None:
        results = self.pool.collect()
        if results:
            # Each finished task frees a process: in pull mode that is a request for one more.
            free = 0 if self.stopping else len(results)
            self.send(protocol.Results(tuple(results), free=free))

    def reconnect(self) -> None:
        wait = self.liveness.next_backoff()
        log.warning("no word from the dispatcher for %.1f s; reconnecting in %.1f s", self.liveness.ttl, wait)
        deadline = self.clock() + wait
        while self.clock() < deadline and not self.stopped:  # keep serving the pool meanwhile
            time.sleep(min(0.05, max(0.0, deadline - self.clock())))
            self.unsent.extend(self.pool.collect())
        self.connect()


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
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("processes must be at least 1")
    logging.basicConfig(level=os.environ.get("FAAS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    RemoteWorker(mode, args.processes, args.endpoint, keys_dir=args.keys_dir, key_name=args.key_name,
                 heartbeat_interval=args.heartbeat_interval, heartbeat_liveness=args.heartbeat_liveness,
                 max_result_bytes=args.max_result_bytes).run()
    return 0
