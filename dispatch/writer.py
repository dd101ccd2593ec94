"""The dispatcher's database writer: a thread that applies the batched state changes, so a
busy or slow database never stalls dispatching.

With SQLite the web servers hold the write lock for every submit; a dispatcher that waited
for it in its own loop (SQLite's busy handler sleeps up to 100 ms between tries) left
queued tasks waiting for hundreds of milliseconds under load. The loop now only appends
to an inbox; the thread drains it every `interval` seconds into PendingWrites and writes.
Redis already holds every state, so a late database write changes nothing clients see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from django.db import DatabaseError, IntegrityError, connection

from dispatch.batch import PendingWrites
from functions import services

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before a batch the database refused is tried again
MIN_INTERVAL = 0.005  # seconds: an interval of 0 means "as soon as possible", not a spinning thread


class DatabaseWriter:
    def __init__(self, interval: float, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self.pending = PendingWrites()  # the thread's own: never touched by the loop
        self.lock = threading.Lock()  # guards the inbox below
        self.running: list[tuple[str, int | None, int, float]] = []
        self.outcomes: list[services.Outcome] = []
        self.worker_state: dict[int, dict] = {}
        self.worker_done: Counter[int] = Counter()
        self.links_broken = threading.Event()  # the database refused a batch for its worker links
        self.wake = threading.Event()
        self.idle = threading.Condition()
        self.requested = self.completed = 0  # flush requests, and how many the thread has served
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="database-writer", daemon=True)

    # --- the loop's side -------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def mark_running(self, task_id: str, worker_id: int | None, attempt: int, at: float) -> None:
        with self.lock:
            self.running.append((task_id, worker_id, attempt, at))

    def finish(self, outcome: services.Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def workers(self, state: dict[int, dict], done: dict[int, int]) -> None:
        """Heartbeat and busy changes, and tasks done, per Worker row id."""
        with self.lock:
            for worker_id, fields in state.items():
                self.worker_state.setdefault(worker_id, {}).update(fields)
            self.worker_done.update(done)

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
                except Exception:  # a bug must not end the thread: the batch stays for the next try
                    log.exception("writing to the database failed; will retry")
                    self.wake.wait(RETRY_AFTER)
                with self.idle:
                    self.completed = serving
                    self.idle.notify_all()
        finally:
            connection.close()  # this thread's own database connection

    def write_once(self) -> None:
        with self.lock:
            running, self.running = self.running, []
            outcomes, self.outcomes = self.outcomes, []
            state, self.worker_state = self.worker_state, {}
            done, self.worker_done = self.worker_done, Counter()
        for task_id, worker_id, attempt, at in running:
            self.pending.mark_running(task_id, worker_id, attempt, at)
        for outcome in outcomes:
            self.pending.finish(outcome)
        if len(self.pending):
            self.write_tasks()
        if state or done:
            self.write_workers(state, done)

    def write_tasks(self) -> None:
        """Apply the batch; a database outage keeps it for the next try."""
        try:
            self.pending.flush(self.clock())
        except IntegrityError:  # e.g. an operator deleted a Worker row we still point at
            log.exception("database rejected the batch; retrying it without worker links")
            self.pending.forget_workers()
            self.links_broken.set()
        except DatabaseError:
            log.exception("database unavailable; keeping %d write(s) for the next try", len(self.pending))
            self.wake.wait(RETRY_AFTER)

    def write_workers(self, state: dict[int, dict], done: Counter[int]) -> None:
        try:
            services.workers_update(state, done)
        except DatabaseError:
            log.exception("could not record worker state; will retry")
            with self.lock:  # back into the inbox, under anything newer
                for worker_id, fields in state.items():
                    self.worker_state[worker_id] = {**fields, **self.worker_state.get(worker_id, {})}
                self.worker_done.update(done)
