"""Group commit for task rows: concurrent submits in one server process share a transaction.

SQLite takes one writer at a time. With every request thread opening its own transaction,
the threads queued on the database lock inside SQLite's busy handler, which sleeps up to
100 ms between tries: under load most of a submit was spent asleep (figures in
docs/benchmark.md).

Here the threads of a process queue on a mutex instead. Whoever holds it writes the rows of
every thread that arrived meanwhile in one transaction and wakes them, so a busy process
commits once per group, and a lone request goes straight through without waiting for anyone.
Every request still answers only after its rows are committed: the durability rule holds.
Rows of other models that belong with the tasks (the submit's audit entry) ride in the same
transaction as `companions`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection, transaction

from functions.models import Task


@dataclass(eq=False)
class _Job:
    rows: list[Task]
    companions: list = field(default_factory=list)
    done: bool = False  # set, under the writer mutex, by whoever wrote the rows
    error: Exception | None = None


class GroupInsert:
    def __init__(self):
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()  # one thread of this process writes at a time

    def insert(self, rows: list[Task], companions: list = ()) -> None:
        """Commit `rows` (and `companions`, rows of any model), alone or with other threads'
        rows; raises what their insert raised."""
        if connection.in_atomic_block:  # the caller's own transaction decides: never mix others into it
            with transaction.atomic():
                _create([_Job(rows, list(companions))])
            return
        job = _Job(rows, list(companions))
        with self._queue_lock:
            self._queue.append(job)
        with self._writer:
            if not job.done:  # a writer before us may have taken our rows already
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._write(group)
        if job.error is not None:
            raise job.error

    @staticmethod
    def _write(group: list[_Job]) -> None:
        try:
            with transaction.atomic():
                _create(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
            else:  # someone's rows were refused (a function deleted a moment ago?): each on its own
                for job in group:
                    try:
                        with transaction.atomic():
                            _create([job])
                    except Exception as own:
                        job.error = own
        for job in group:
            job.done = True


def _create(group: list[_Job]) -> None:
    """One bulk INSERT for the tasks of `group`, then one per model of their companions."""
    Task.objects.bulk_create([row for job in group for row in job.rows])
    others = defaultdict(list)
    for job in group:
        for row in job.companions:
            others[type(row)].append(row)
    for model, rows in others.items():
        model.objects.bulk_create(rows)
