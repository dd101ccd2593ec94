"""Database writes the dispatcher holds back and applies in batches (DESIGN §3).

SQLite is never hit once per message: state changes gather here and one flush writes
them with a handful of statements.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict

from functions import services


def from_timestamp(ts: float | None):
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


class PendingWrites:
    def __init__(self):
        self.running: dict[tuple[int | None, int], list[str]] = defaultdict(list)
        self.running_at: dict[tuple[int | None, int], float] = {}
        self.outcomes: list[services.Outcome] = []

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

    def flush(self) -> int:
        """Apply everything gathered; RUNNING first so a final state is never overwritten."""
        count = len(self)
        for (worker_id, attempt), ids in self.running.items():
            services.tasks_mark_running(task_ids=ids, worker_id=worker_id, attempts=attempt,
                                        dispatched_at=from_timestamp(self.running_at[(worker_id, attempt)]))
        services.tasks_finish(self.outcomes)
        self.running.clear()
        self.running_at.clear()
        self.outcomes = []
        return count
