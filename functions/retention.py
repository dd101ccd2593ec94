"""What a finished task leaves, and for how long (FAAS_RESULT_TTL, FAAS_TASK_HISTORY_TTL).

After the result TTL a finished task's bytes go: the result, the payload and the output in
the database (Redis expires its hash by itself at the same age). The row itself stays as
history (status, timings, error, sizes) until the history TTL, if one is set, and then
goes too, with any Redis record left. Work is done in chunks of short transactions, so
SQLite's single writer is never held for long; a row is chosen by its creation time
(indexed), which is never later than its finish.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from functions import services
from functions.models import Task
from workers.protocol import FINAL_STATUSES

CHUNK = 1000  # rows per transaction


@dataclass
class Swept:
    expired: int = 0  # finished tasks whose result and payload bytes were dropped
    deleted: int = 0  # task rows deleted


def _old_final(cutoff: dt.datetime, status: str | None = None):
    statuses = [status] if status else list(FINAL_STATUSES)
    return Task.objects.filter(created_at__lt=cutoff, finished_at__lt=cutoff, status__in=statuses)


def expire_results(*, older_than: dt.timedelta, now: dt.datetime | None = None, dry_run: bool = False) -> int:
    """Drop the result, payload and output bytes of tasks finished longer ago than `older_than`."""
    cutoff = (now or timezone.now()) - older_than
    rows = _old_final(cutoff).filter(result__isnull=False)
    if dry_run:
        return rows.count()
    done = 0
    while ids := list(rows.values_list("id", flat=True)[:CHUNK]):
        with transaction.atomic():
            done += Task.objects.filter(id__in=ids).update(result=None, payload=b"", output="")
    return done


def purge_tasks(*, older_than: dt.timedelta, status: str | None = None, now: dt.datetime | None = None,
                dry_run: bool = False) -> int:
    """Delete finished tasks created and finished longer ago than `older_than` (only those
    in `status`, if given), and their Redis records; unfinished tasks are never touched."""
    cutoff = (now or timezone.now()) - older_than
    rows = _old_final(cutoff, status)
    if dry_run:
        return rows.count()
    done, store = 0, services.task_store()
    while ids := list(rows.values_list("id", flat=True)[:CHUNK]):
        with transaction.atomic():
            Task.objects.filter(retry_of__in=ids).update(retry_of=None)
            done += Task.objects.filter(id__in=ids).delete()[0]
        store.forget_tasks([str(i) for i in ids])
    return done


def sweep(*, result_ttl: float, history_ttl: float | None, now: dt.datetime | None = None) -> Swept:
    """One clean-up pass with the configured TTLs (seconds), as a dispatcher runs it."""
    now = now or timezone.now()
    swept = Swept(expired=expire_results(older_than=dt.timedelta(seconds=result_ttl), now=now))
    if history_ttl:
        swept.deleted = purge_tasks(older_than=dt.timedelta(seconds=history_ttl), now=now)
    return swept
