"""The database side of the dispatcher: task and worker rows changed in batches.

The database is the authority for final states: a row that is final never changes again,
and the dispatcher acknowledges a task's stream entry only once its final state is here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from functions.models import Function, Task, Worker
from functions.taskstore import QueuedTask
from workers import limits
from workers.protocol import FINAL_STATUSES, Result, TaskStatus

UNFINISHED = [TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]


def from_timestamp(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def to_timestamp(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def queue_entry(task_id, function_id, owner_id: int | None, payload, timeout: float | None,
                attempt: int = 1, retry: str = "", memory_mb: int | None = None,
                cpu_s: int | None = None) -> QueuedTask:
    """What Redis queues for one task row (the owner as the store writes it: "" for anonymous)."""
    return QueuedTask(str(task_id), str(function_id), "" if owner_id is None else str(owner_id),
                      bytes(payload), timeout, attempt, retry,
                      limits.encode(memory_mb and memory_mb * limits.MIB, cpu_s))


# --- reading ---------------------------------------------------------------------------

def queued_since(since: dt.datetime, *, after: tuple | None = None, limit: int = 500) -> list[tuple]:
    """(created_at, id) of QUEUED rows created since `since`, oldest first, after the
    (created_at, id) `after`: one page of the database's queue, without payloads."""
    rows = Task.objects.filter(status=TaskStatus.QUEUED, created_at__gte=since)
    if after is not None:
        rows = rows.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1]))
    return list(rows.order_by("created_at", "id").values_list("created_at", "id")[:limit])


def queue_entries(task_ids: list, statuses=(TaskStatus.QUEUED.value,)) -> list[QueuedTask]:
    """The queue entries of rows in `statuses`, rebuilt from the database (payloads
    included), in the order of `task_ids`; the attempt is the next one."""
    rows = Task.objects.filter(id__in=task_ids, status__in=statuses).values_list(
        "id", "function_id", "owner_id", "payload", "timeout", "attempts", "memory_limit_mb", "cpu_limit_s")
    found = {str(tid): queue_entry(tid, fid, owner, payload, timeout, attempts + 1, memory_mb=memory,
                                   cpu_s=cpu)
             for tid, fid, owner, payload, timeout, attempts, memory, cpu in rows}
    return [found[str(t)] for t in task_ids if str(t) in found]


def final_states(task_ids: list[str]) -> list[tuple[Result, dict]]:
    """The final rows among `task_ids`, as results with the record fields a lost Redis hash
    needs (owner, function): what Redis is repaired from."""
    rows = Task.objects.filter(id__in=task_ids, status__in=FINAL_STATUSES).values_list(
        "id", "status", "result", "error", "started_at", "finished_at", "owner_id", "function_id", "output")
    return [(Result(str(tid), status, bytes(result or b""), error or "", to_timestamp(started),
                    to_timestamp(finished), output=output or ""),
             {"owner": "" if owner is None else str(owner), "function_id": str(fid)})
            for tid, status, result, error, started, finished, owner, fid, output in rows]


def running_under(excluded: set[str], dispatched_before: dt.datetime, limit: int = 500) -> list[tuple[str, str]]:
    """(task id, dispatcher) of RUNNING rows held by dispatchers not in `excluded`."""
    rows = (Task.objects.filter(status=TaskStatus.RUNNING, dispatched_at__lt=dispatched_before)
            .exclude(dispatcher="").exclude(dispatcher__in=excluded))
    return [(str(tid), name) for tid, name in rows.values_list("id", "dispatcher")[:limit]]


def function_payloads(function_ids: list[str]) -> dict[str, bytes]:
    """Payloads straight from the database, for a dispatcher whose Redis lost them."""
    if not function_ids:
        return {}
    rows = Function.objects.filter(id__in=function_ids).values_list("id", "payload")
    return {str(fid): bytes(payload) for fid, payload in rows}


# --- task transitions ------------------------------------------------------------------

def mark_running(*, task_ids: list[str], worker_id: int | None, dispatched_at, attempts: int,
                 dispatcher: str) -> int:
    """Record that tasks were handed to a worker; never touches a final row (a cancel)."""
    return (Task.objects.filter(id__in=task_ids, status__in=UNFINISHED)
            .update(status=TaskStatus.RUNNING, worker_id=worker_id, dispatched_at=dispatched_at, attempts=attempts,
                    dispatcher=dispatcher))


def requeue_rows(task_ids: list[str], *, dispatcher: str) -> list[str]:
    """RUNNING rows of a dispatcher that is gone back to QUEUED (a retry): returns those changed."""
    with transaction.atomic():
        ids = list(Task.objects.select_for_update().filter(id__in=task_ids, status=TaskStatus.RUNNING,
                                                            dispatcher=dispatcher).values_list("id", flat=True))
        Task.objects.filter(id__in=ids).update(status=TaskStatus.QUEUED, dispatcher="")
    return [str(i) for i in ids]


@dataclass(frozen=True)
class Settled:
    """A final state on its way to the database, with what the row links to and the stream
    entry to acknowledge once it is written."""

    result: Result
    worker_id: int | None = None
    attempt: int = 1
    entry_id: bytes | None = None


@dataclass
class FinishReport:
    written: list[Settled]  # the row now holds this final state
    absent: list[Settled]  # no row yet (its insert has not committed): try again
    overruled: list[Settled]  # the row already held another final state: Redis must follow the row


_OUTCOME_FIELDS = ["status", "result", "result_size", "error", "started_at", "finished_at", "worker", "attempts",
                   "output"]


def finish(settled: list[Settled]) -> FinishReport:
    """Write final states with one prepared UPDATE per row (executemany), each refused by a
    row that is already final; then, in the same transaction, read back which rows hold
    which state. Django's bulk_update builds a CASE per field per row in Python, which cost
    more than the whole rest of the dispatcher."""
    report = FinishReport([], [], [])
    if not settled:
        return report
    meta, qn = Task._meta, connection.ops.quote_name
    fields = [meta.get_field(name) for name in _OUTCOME_FIELDS]
    status_column = qn(meta.get_field("status").column)
    sql = (f"UPDATE {qn(meta.db_table)} SET " + ", ".join(f"{qn(f.column)} = %s" for f in fields)
           + f" WHERE {qn(meta.pk.column)} = %s AND {status_column} IN (%s, %s)")
    now = timezone.now()
    rows, written_at = [], {}
    for s in settled:
        r = s.result
        finished = from_timestamp(r.finished_at) or now
        written_at[r.task_id] = finished
        values = [r.status, r.result, len(r.result), r.error, from_timestamp(r.started_at), finished, s.worker_id,
                  s.attempt, r.output]
        rows.append([f.get_db_prep_save(v, connection) for f, v in zip(fields, values)]
                    + [meta.pk.get_db_prep_save(uuid.UUID(r.task_id), connection), *UNFINISHED])
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        held = {str(tid): (status, finished) for tid, status, finished in Task.objects.filter(
            id__in=[s.result.task_id for s in settled]).values_list("id", "status", "finished_at")}
    for s in settled:
        state = held.get(s.result.task_id)
        if state is None or state[0] not in FINAL_STATUSES:
            report.absent.append(s)  # not inserted yet, or inserted after our UPDATE ran
        elif state == (s.result.status, written_at[s.result.task_id]):
            report.written.append(s)
        else:
            report.overruled.append(s)
    return report


def fail_lost(task_ids: list[str], *, dispatcher: str, result: Result) -> list[str]:
    """FAIL RUNNING rows held by a dispatcher that is gone (Redis lost them with it)."""
    finished = from_timestamp(result.finished_at) or timezone.now()
    with transaction.atomic():
        ids = list(Task.objects.select_for_update().filter(id__in=task_ids, status=TaskStatus.RUNNING,
                                                            dispatcher=dispatcher).values_list("id", flat=True))
        Task.objects.filter(id__in=ids).update(status=result.status, result=result.result,
                                               result_size=len(result.result), error=result.error,
                                               finished_at=finished)
    return [str(i) for i in ids]


# --- workers ---------------------------------------------------------------------------

def worker_upsert(identity: str, fields: dict) -> int:
    """Create or revive a worker's row with `fields`; returns its id."""
    worker, _ = Worker.objects.update_or_create(identity=identity, defaults=_worker_values(fields))
    return worker.pk


def worker_update(worker_id: int, fields: dict, done: int = 0) -> None:
    values = _worker_values(fields)
    if done:
        values["tasks_done"] = F("tasks_done") + done
    if values:
        Worker.objects.filter(pk=worker_id).update(**values)


def _worker_values(fields: dict) -> dict:
    values = dict(fields)
    if isinstance(values.get("last_heartbeat"), float):
        values["last_heartbeat"] = from_timestamp(values["last_heartbeat"])
    return values
