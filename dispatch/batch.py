"""Database writes the dispatcher holds back and applies in batches (DESIGN §3).

SQLite is never hit once per message: state changes gather here and one flush writes
them with a handful of statements.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict

from functions import services

log = logging.getLogger(__name__)

ORPHAN_PATIENCE = 30.0  # seconds to keep retrying a final state whose row has not appeared


def from_timestamp(ts: float | None):
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


class PendingWrites:
    def __init__(self):
        self.running: dict[tuple[int | None, int], list[str]] = defaultdict(list)
        self.running_at: dict[tuple[int | None, int], float] = {}
        self.outcomes: list[services.Outcome] = []
        self.first_missed: dict[str, float] = {}  # task_id -> when its row was first found missing

    def __len__(self) -> int:
        return sum(len(v) for v in self.running.values()) + len(self.outcomes)

    def mark_running(self, task_id: str, worker_id: int | None, attempt: int, at: float) -> None:
        key = (worker_id, attempt)
        self.running[key].append(task_id)
        self.running_at.setdefault(key, at)

    def finish(self, outcome: services.Outcome) -> None:
        self.outcomes.append(outcome)

    def forget_workers(self) -> None:
        """Drop worker links from what is pending (their rows are gone)."""
        running = defaultdict(list)
        for (_, attempt), ids in self.running.items():
            running[(None, attempt)].extend(ids)
            self.running_at.setdefault((None, attempt), self.running_at[(_, attempt)])
        self.running = running
        self.outcomes = [dataclasses.replace(o, worker_id=None) for o in self.outcomes]

    def flush(self, now: float) -> int:
        """Apply everything gathered: RUNNING first (skipping tasks that already finished in
        this batch) so a final state is never overwritten. A final state whose row is not
        committed yet (the web inserts it just after queueing) is kept for the next flush."""
        count = len(self)
        finished = {o.task_id for o in self.outcomes}
        for (worker_id, attempt), ids in self.running.items():
            ids = [t for t in ids if t not in finished]
            if ids:
                services.tasks_mark_running(task_ids=ids, worker_id=worker_id, attempts=attempt,
                                            dispatched_at=from_timestamp(self.running_at[(worker_id, attempt)]))
        missing = services.tasks_finish(self.outcomes)
        self.running.clear()
        self.running_at.clear()
        self.outcomes = self.hold_back(missing, now)
        return count - len(self.outcomes)

    def hold_back(self, missing: list[services.Outcome], now: float) -> list[services.Outcome]:
        """Outcomes to retry: those whose row may still appear, for at most ORPHAN_PATIENCE s."""
        for o in missing:
            self.first_missed.setdefault(o.task_id, now)
        kept = [o for o in missing if now - self.first_missed[o.task_id] < ORPHAN_PATIENCE]
        kept_ids = {o.task_id for o in kept}
        for o in missing:
            if o.task_id not in kept_ids:
                log.warning("task %s has no database row; its final state lives only in Redis", o.task_id)
        self.first_missed = {t: at for t, at in self.first_missed.items() if t in kept_ids}
        return kept
