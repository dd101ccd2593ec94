"""The dispatcher's database writer: a thread that applies state changes in batches, so a
busy or slow database never stalls dispatching, and SQLite is never hit once per message.

The loop only appends to an inbox, in the order things happened. The thread drains it every
`interval` seconds and writes: worker rows (folded per worker, in order, so a worker that
was lost and came back is shown alive), then RUNNING marks, then final states. A task's
stream entry is acknowledged only once its final state is committed, so a dispatcher killed
in between leaves the entry pending, and whoever reclaims it copies the final state from
Redis instead of losing it. Where the database already held another final state, the
database wins and Redis is repaired from it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict

import redis
from django.db import DatabaseError, IntegrityError, connection

from functions import taskrows
from functions.taskrows import Settled
from workers.protocol import Result

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before a batch the database refused is tried again
MIN_INTERVAL = 0.005  # seconds: an interval of 0 means "as soon as possible", not a spinning thread
ORPHAN_PATIENCE = 30.0  # seconds to keep retrying a final state whose row has not appeared


@dataclasses.dataclass
class _WorkerChange:
    create: bool = False  # the worker (re)registered: create or revive its row
    fields: dict = dataclasses.field(default_factory=dict)
    done: int = 0


class DatabaseWriter:
    def __init__(self, interval: float, store, dispatcher: str, result_ttl: int, clock=time.monotonic):
        self.interval = interval
        self.store = store
        self.dispatcher = dispatcher
        self.result_ttl = result_ttl
        self.clock = clock
        self.lock = threading.Lock()  # guards the inbox
        self.inbox: list[tuple] = []
        # the thread's own state, never touched by the loop
        self.worker_ids: dict[str, int] = {}
        self.outcomes: list[Settled] = []
        self.first_missed: dict[str, float] = {}
        self.unacked: list[bytes] = []
        self.workers: dict[str, _WorkerChange] = {}
        self.running: dict[tuple[str | None, int], list[str]] = defaultdict(list)
        self.running_at: dict[tuple[str | None, int], float] = {}
        self.wake = threading.Event()
        self.idle = threading.Condition()
        self.requested = self.completed = 0  # flush requests, and how many the thread has served
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="database-writer", daemon=True)

    # --- the loop's side -------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def _put(self, *event) -> None:
        with self.lock:
            self.inbox.append(event)

    def mark_running(self, task_id: str, worker: str | None, attempt: int, at: float) -> None:
        self._put("running", task_id, worker, attempt, at)

    def finish(self, result: Result, worker: str | None, attempt: int, entry_id: bytes | None) -> None:
        self._put("finish", result, worker, attempt, entry_id)

    def forget(self, entry_ids: list[bytes]) -> None:
        """Entries to acknowledge once what came before them is written."""
        if entry_ids:
            self._put("forget", list(entry_ids))

    def worker_seen(self, identity: str, **fields) -> None:
        self._put("worker", identity, True, fields, 0)

    def worker_state(self, identity: str, done: int = 0, **fields) -> None:
        self._put("worker", identity, False, fields, done)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything handed over so far, and wait until it is written (or given up
        for now); False if the thread did not get through it within `timeout` seconds."""
        with self.idle:
            self.requested += 1
            wanted = self.requested
            self.wake.set()
            return self.idle.wait_for(lambda: self.completed >= wanted or not self.thread.is_alive(), timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Final flush, then stop the thread."""
        if self.thread.is_alive():
            self.flush(timeout)
            self.stopping = True
            self.wake.set()
            self.thread.join(timeout)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stopping:
                self.wake.wait(max(self.interval, MIN_INTERVAL))
                self.wake.clear()
                with self.idle:
                    serving = self.requested
                try:
                    self.write_once()
                except Exception:  # a bug must not end the thread: what is kept is tried again
                    log.exception("writing to the database failed; will retry")
                    self.wake.wait(RETRY_AFTER)
                with self.idle:
                    self.completed = serving
                    self.idle.notify_all()
        finally:
            connection.close()  # this thread's own database connection

    def write_once(self) -> None:
        with self.lock:
            events, self.inbox = self.inbox, []
        workers, running, running_at = self.workers, self.running, self.running_at
        for event in events:
            kind = event[0]
            if kind == "worker":
                _, identity, create, fields, done = event
                change = workers.setdefault(identity, _WorkerChange())
                if create:
                    change.create, change.fields = True, dict(fields)
                else:
                    change.fields.update(fields)
                change.done += done
            elif kind == "running":
                _, task_id, worker, attempt, at = event
                running[(worker, attempt)].append(task_id)
                running_at.setdefault((worker, attempt), at)
            elif kind == "finish":
                _, result, worker, attempt, entry_id = event
                self.outcomes.append(("pending", result, worker, attempt, entry_id))
            else:
                self.unacked.extend(event[1])
        try:  # each step clears what it wrote; anything left is tried again next time
            self.write_workers(workers, created=True)
            self.write_tasks()
            self.write_workers(workers, created=False)
        except DatabaseError:
            log.exception("database unavailable; keeping the batch for the next try")
            self.wake.wait(RETRY_AFTER)
        self.acknowledge()

    def write_workers(self, workers: dict[str, _WorkerChange], created: bool) -> None:
        for identity, change in list(workers.items()):
            if change.create != created:
                continue
            if created:
                self.worker_ids[identity] = taskrows.worker_upsert(identity, change.fields)
                if change.done:
                    taskrows.worker_update(self.worker_ids[identity], {}, change.done)
            elif identity in self.worker_ids:
                taskrows.worker_update(self.worker_ids[identity], change.fields, change.done)
            del workers[identity]

    def write_tasks(self) -> None:
        settled = [o if isinstance(o, Settled) else Settled(o[1], self.worker_ids.get(o[2]), o[3], o[4])
                   for o in self.outcomes]
        self.outcomes = settled
        finished = {s.result.task_id for s in settled}
        try:
            for (worker, attempt), ids in list(self.running.items()):
                ids = [t for t in ids if t not in finished]
                if ids:
                    taskrows.mark_running(task_ids=ids, worker_id=self.worker_ids.get(worker), attempts=attempt,
                                          dispatched_at=taskrows.from_timestamp(self.running_at[(worker, attempt)]),
                                          dispatcher=self.dispatcher)
                del self.running[(worker, attempt)]
                del self.running_at[(worker, attempt)]
            report = taskrows.finish(settled)
        except IntegrityError:  # e.g. an operator deleted a Worker row we still point at
            log.exception("database rejected the batch; retrying it without worker links")
            self.worker_ids.clear()
            self.outcomes = [dataclasses.replace(s, worker_id=None) for s in settled]
            raise
        self.unacked += [s.entry_id for s in report.written + report.overruled if s.entry_id]
        if report.overruled:
            self.repair([s.result.task_id for s in report.overruled])
        self.outcomes = self.hold_back(report.absent)

    def repair(self, task_ids: list[str]) -> None:
        """Redis follows the database where they disagree on a final state."""
        states = taskrows.final_states(task_ids)
        log.warning("%d task(s) already had another final state in the database; Redis repaired from it",
                    len(states))
        try:
            self.store.repair(states, self.result_ttl)
        except redis.RedisError as exc:
            log.warning("could not repair Redis (%s); the next reconciliation will", exc)

    def hold_back(self, absent: list[Settled]) -> list[Settled]:
        """Outcomes to retry: those whose row may still appear, for at most ORPHAN_PATIENCE s."""
        now = self.clock()
        kept = []
        for s in absent:
            first = self.first_missed.setdefault(s.result.task_id, now)
            if now - first < ORPHAN_PATIENCE:
                kept.append(s)
            else:
                log.warning("task %s has no database row; its final state lives only in Redis", s.result.task_id)
                if s.entry_id:
                    self.unacked.append(s.entry_id)
        kept_ids = {s.result.task_id for s in kept}
        self.first_missed = {t: at for t, at in self.first_missed.items() if t in kept_ids}
        return kept

    def acknowledge(self) -> None:
        if not self.unacked:
            return
        try:
            self.store.forget(self.unacked)
            self.unacked = []
        except redis.RedisError as exc:  # kept: acknowledged once Redis answers again
            log.warning("could not acknowledge %d entries yet: %s", len(self.unacked), exc)
