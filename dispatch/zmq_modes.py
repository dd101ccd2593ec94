"""What pull and push modes share: a ROUTER socket, the worker table, heartbeats both
ways, and the handling of results, registrations and dead workers.

The two modes differ only in who decides where a task goes: pull workers ask for work
(credits), push workers are sent work by the dispatcher (most free processes first).
"""

from __future__ import annotations

import logging
import time

import zmq

from dispatch.core import Dispatcher
from dispatch.workertable import WorkerEntry, WorkerTable
from workers import environment, protocol

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_POLL = 1000  # bound one read burst so periodic work still runs


class RemoteDispatcher(Dispatcher):
    """Base for ZeroMQ modes; subclasses decide `capacity()` and `choose()`."""

    def setup(self) -> None:
        self.table = WorkerTable(self.config.heartbeat_interval, self.config.heartbeat_liveness)
        self.asked: dict[bytes, float] = {}  # identity -> until when we will not ask it to register again
        self.next_heartbeat = 0.0
        self.context = zmq.Context()  # made here, after any fork, never inherited
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable send raises instead of vanishing
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting worker takes over its identity
        self.socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.authenticator = None
        if self.config.secure:
            from workers.security import secure_server

            self.authenticator = secure_server(self.socket, self.config.keys_dir)
        elif self.config.insecure:
            log.warning("listening on %s WITHOUT encryption or authentication (--insecure)", self.config.endpoint)
        self.socket.bind(self.config.endpoint)
        log.info("%s dispatcher listening on %s%s", self.mode, self.config.endpoint,
                 " with CURVE" if self.authenticator else "")

    def teardown(self) -> None:
        for entry in list(self.table.workers.values()):
            self.deliver(entry.identity, protocol.Disconnect("dispatcher stopping"))
        self.socket.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()

    # --- sockets -------------------------------------------------------------------------

    def poll_items(self) -> list:
        return [self.socket]

    def deliver(self, identity: bytes, message) -> bool:
        """Send to one worker; False if it is not connected right now. Only missed heartbeats
        declare a worker dead: a worker whose connection dropped may be back in a moment."""
        try:
            self.socket.send_multipart([identity, *protocol.encode(message)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            log.debug("worker %r unreachable; dropped a %s", identity[:64], type(message).__name__)
            return False

    def on_ready(self, ready: set, now: float) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            try:
                message = protocol.decode(body)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed message from %r: %s", identity[:64], exc)
                continue
            self.handle(identity, message, now)

    def handle(self, identity: bytes, message, now: float) -> None:
        known = self.table.seen(identity, now)
        match message:
            case protocol.Register(info):
                self.register(identity, info, now)
            case protocol.Request(free, info):
                if not known:
                    self.register(identity, info, now)
                self.table.get(identity).credit += free
            case protocol.Results(results, free):
                self.on_results(identity, results, free, known)
            case protocol.Progress(updates):  # only from the worker holding each task
                self.report_progress([u for u in updates if self.table.holds(identity, u[0])])
            case protocol.Heartbeat():
                if not known:
                    self.ask_to_register(identity, now)
            case protocol.Disconnect(reason):
                if known:
                    self.worker_lost(identity, f"worker disconnected ({reason or 'no reason given'})",
                                     never_received=reason == protocol.CLEAN_GOODBYE)
            case _:
                log.warning("unexpected %s from worker %r", type(message).__name__, identity[:64])

    # --- workers -------------------------------------------------------------------------

    def ask_to_register(self, identity: bytes, now: float) -> None:
        """We restarted, or declared the worker dead: make it register again — once, not for
        every heartbeat it queued while we were away."""
        if self.asked.get(identity, 0.0) > now:
            return
        self.asked[identity] = now + self.table.ttl
        self.deliver(identity, protocol.Disconnect("unknown worker; register again"))

    def register(self, identity: bytes, info: protocol.WorkerInfo, now: float) -> WorkerEntry:
        self.asked.pop(identity, None)
        entry, missing = self.table.register(identity, info, now)
        if missing:  # the same worker process does not have them: they never reached it
            requeued = self.requeue(missing, count_attempt=False)
            log.warning("worker %s re-registered without %d task(s) sent to it; %d re-queued",
                        entry.name, len(missing), requeued)
        self.worker_seen(entry.name, info, busy=info.busy)
        log.info("worker %s registered with %d processes (%d busy)", entry.name, info.processes, info.busy)
        self.backlog = True
        return entry

    def on_results(self, identity: bytes, results: tuple, free: int, known: bool) -> None:
        """Results count only from the worker that holds each task now; anything else (a
        forged frame, a worker that lost the task to a retry elsewhere) is dropped and logged."""
        accepted = []
        for result in results:
            if self.table.holds(identity, result.task_id):
                self.table.release(result.task_id, identity)
                accepted.append(result)
            else:
                log.warning("dropped a result for task %s from %r, which does not hold it",
                            result.task_id[:64], identity[:64])
        entry = self.table.get(identity)
        if entry is not None:
            entry.credit += free
            self.worker_state(entry.name, busy=entry.busy, last_heartbeat=time.time())
        self.accept_results(accepted)
        self.backlog = True

    def worker_lost(self, identity: bytes, reason: str, never_received: bool = False) -> None:
        """A worker is gone. After its clean goodbye (it reported every result first, on the same
        ordered connection), the tasks still counted as its own crossed the goodbye and never
        ran there: they go back on the queue without spending an attempt."""
        entry = self.table.remove(identity)
        if entry is None:
            return
        log.warning("worker %s lost: %s; %d task(s) affected", entry.name, reason, len(entry.tasks))
        self.worker_state(entry.name, alive=False, busy=0)
        if entry.tasks and never_received:
            self.requeue(sorted(entry.tasks), count_attempt=False)
        elif entry.tasks:
            self.lose(sorted(entry.tasks), f"worker {entry.name}: {reason}")

    def drain_worker(self, identity: str) -> None:
        for entry in self.table.workers.values():
            if entry.name == identity:
                entry.draining = True
                self.worker_state(entry.name, draining=True)
                log.info("worker %s is draining: no new work", identity)

    # --- periodic ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for identity in self.table.expired(now):
            self.worker_lost(identity, f"missed heartbeats for {self.table.ttl:g} s")
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.config.heartbeat_interval
            for entry in list(self.table.workers.values()):
                self.deliver(entry.identity, protocol.Heartbeat(entry.busy))
                self.worker_state(entry.name, busy=entry.busy, last_heartbeat=time.time())

    def next_tick(self, now: float) -> float:
        return self.next_heartbeat

    # --- tasks ---------------------------------------------------------------------------

    def send(self, tasks: list[protocol.Task]) -> dict[str, str]:
        holders: dict[str, str] = {}
        planned = self.choose(tasks)
        for entry, batch in planned:
            if self.deliver(entry.identity, protocol.Tasks(tuple(batch))):
                for task in batch:
                    self.table.assign(entry.identity, task.task_id)
                holders.update({t.task_id: entry.name for t in batch})
        unsent = [t.task_id for t in tasks if t.task_id not in holders]
        if unsent:  # never reached a worker, so no attempt is spent
            self.requeue(unsent, count_attempt=False)
            if sum(len(batch) for _, batch in planned) < len(tasks):  # no free worker could run them
                self.hold_claims(self.clock())
        return holders

    # --- environments ----------------------------------------------------------------------

    def can_run(self, entry: WorkerEntry, task: protocol.Task) -> bool:
        """Whether the worker can import every module the task's pickle needs (a worker that
        did not say what it has is assumed able, as before environments were reported)."""
        needs = self.task_needs.get(task.task_id, ())
        return not needs or entry.info.modules is None or not environment.missing(needs, entry.info.modules)

    def cannot_run(self, needs: tuple[str, ...]) -> str | None:
        """None while some live worker could run it (or none has registered yet: it waits)."""
        live = [e for e in self.table.available() if e.info.modules is not None]
        if not self.table.available() or len(live) < len(self.table.available()):
            return None
        gaps = [environment.missing(needs, e.info.modules) for e in live]
        if all(gaps):
            return environment.sentence(sorted(set().union(*gaps) & set(needs)))
        return None

    def choose(self, tasks: list[protocol.Task]) -> list[tuple[WorkerEntry, list[protocol.Task]]]:
        raise NotImplementedError

    def cancel_running(self, task_id: str, identity: str | None) -> None:
        holder = self.table.holder.get(task_id)
        if holder is not None:
            self.deliver(holder, protocol.Cancel((task_id,)))

    def adopt(self, task_id: str) -> str | None:
        entry = self.table.adopt(task_id)
        return entry.name if entry is not None else None

    def on_overdue(self, task_id: str, identity: str | None) -> None:
        self.cancel_running(task_id, identity)
        self.table.release(task_id)
