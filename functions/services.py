"""Every state change of functions and tasks, for views, admin actions and the dispatcher.

The web side writes the database row and the Redis mirror in one step: the row inside a
transaction, the Redis pipeline before it commits, so a Redis failure leaves nothing behind
and an acknowledged task is both durable and queued.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from functions import mirror
from functions.groupcommit import GroupInsert
from functions.models import Function, Task, Worker
from workers import serialization
from workers.exceptions import WorkerFailureException
from workers.protocol import TaskStatus


class NotFound(Exception):
    """Raised when an id is malformed, unknown, or belongs to another user."""


class NotCancellable(Exception):
    """Raised when a task has already reached a final state."""


def redis_client():
    return mirror.client(settings.REDIS_URL)


def owner_key(user) -> str:
    """How a task's owner is written in Redis: the user id, or "" for anonymous use."""
    return str(user.pk) if user is not None and user.is_authenticated else ""


def _owner(user):
    return user if user is not None and user.is_authenticated else None


def parse_uuid(value) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"{value!r} is not a valid id.") from None


def function_register(*, owner, name: str, payload: bytes) -> Function:
    """Store a validated callable payload and cache it in Redis for the dispatchers."""
    with transaction.atomic():
        function = Function.objects.create(owner=_owner(owner), name=name, payload=payload,
                                           payload_size=len(payload))
        pipe = redis_client().pipeline(transaction=False)
        mirror.put_function(pipe, function.id, owner_key(owner), payload)
        pipe.execute()
    return function


FUNCTION_CACHE_SECONDS = 30.0  # how long a server process trusts a function's owner without asking the database
_function_owners: dict[uuid.UUID, tuple[int | None, float]] = {}


def function_get(*, owner, function_id) -> Function:
    """The caller's function (without its payload); NotFound for anyone else's. Owners of
    recently used functions are remembered: functions never change hands."""
    fid = parse_uuid(function_id)
    owner_id = _owner(owner).pk if _owner(owner) else None
    cached = _function_owners.get(fid)
    if cached is not None and cached[1] > time.monotonic():
        if cached[0] != owner_id:
            raise NotFound(f"No function with id {fid}.")
        return Function(id=fid, owner_id=owner_id)
    try:
        function = Function.objects.only("id", "owner_id", "name").get(id=fid, owner=_owner(owner))
    except Function.DoesNotExist:
        raise NotFound(f"No function with id {fid}.") from None
    if len(_function_owners) > 10_000:
        _function_owners.clear()
    _function_owners[fid] = (function.owner_id, time.monotonic() + FUNCTION_CACHE_SECONDS)
    return function


_task_rows = GroupInsert()  # submits of this process's threads share transactions


def task_submit_batch(*, owner, function: Function, payloads: list[bytes], timeout: float | None = None,
                      retry_of: Task | None = None, received_at: float | None = None) -> list[Task]:
    """Queue many calls of one function: one Redis script call, then the rows' insert
    (grouped with other threads' submits: functions.groupcommit).

    Redis goes first so the SQLite write lock is held only for the insert itself, never
    across a network round trip. If the insert fails, the tasks are failed in Redis before
    the error reaches the client, so nothing unacknowledged ever runs to completion."""
    tasks = [Task(owner=_owner(owner), function=function, payload=p, payload_size=len(p),
                  timeout=timeout, retry_of=retry_of) for p in payloads]
    queued = [_queue_entry(t.id, function.id, t.owner_id, p, timeout) for t, p in zip(tasks, payloads)]
    r = redis_client()
    mirror.enqueue(r, queued, received_at)
    try:
        _task_rows.insert(tasks)
    except Exception as exc:
        _abandon(r, [t.task_id for t in queued])
        if isinstance(exc, IntegrityError):  # the function was deleted a moment ago
            _function_owners.pop(function.id, None)
            raise NotFound(f"No function with id {function.id}.") from None
        raise
    return tasks


def _queue_entry(task_id, function_id, owner_id: int | None, payload, timeout: float | None,
                 attempt: int = 1) -> mirror.QueuedTask:
    """What Redis queues for one task row (owner as `owner_key` writes it)."""
    return mirror.QueuedTask(str(task_id), str(function_id), "" if owner_id is None else str(owner_id),
                             bytes(payload), timeout, attempt)


def _abandon(r, task_ids: list[str]) -> None:
    """Fail tasks whose database row could not be written (their submit answered an error)."""
    result = serialization.dumps(WorkerFailureException("the task could not be recorded"))
    pipe = r.pipeline(transaction=False)
    for task_id in task_ids:
        mirror.finish(pipe, task_id, TaskStatus.FAILED.value, result,
                      "WorkerFailureException: the task could not be recorded", settings.FAAS_RESULT_TTL)
    mirror.execute(pipe, raise_on_error=True)


def task_submit(*, owner, function: Function, payload: bytes, timeout: float | None = None,
                received_at: float | None = None) -> Task:
    return task_submit_batch(owner=owner, function=function, payloads=[payload], timeout=timeout,
                             received_at=received_at)[0]


@dataclass(frozen=True)
class TaskView:
    """A task as the API shows it, from Redis or the database."""

    task_id: str
    status: str
    result: bytes | None
    error: str


def task_view(*, owner, task_id) -> TaskView:
    """The caller's task from the Redis mirror, falling back to the database."""
    tid = parse_uuid(task_id)
    data = mirror.read_task(redis_client(), tid)
    if data is not None and "status" in data:
        if data.get("owner", b"").decode() != owner_key(owner):
            raise NotFound(f"No task with id {tid}.")
        status = data["status"].decode()
        result = data.get("result") if status in mirror.FINAL else None
        return TaskView(str(tid), status, result, data.get("error", b"").decode())
    row = (Task.objects.filter(id=tid, owner=_owner(owner))
           .values_list("status", "result", "error").first())
    if row is None:
        raise NotFound(f"No task with id {tid}.")
    status, result, error = row
    return TaskView(str(tid), status, bytes(result) if result is not None and status in mirror.FINAL else None,
                    error or "")


def task_cancel(*, task: Task, reason: str = "cancelled", queued_only: bool = False) -> None:
    """Fail a task as cancelled: a QUEUED one never runs, a RUNNING one has its process
    stopped (unless `queued_only`). Redis decides, atomically, whether it was still unfinished."""
    r = redis_client()
    result = serialization.dumps(WorkerFailureException(reason))
    error = f"WorkerFailureException: {reason}"
    changed = mirror.finish(r, task.id, TaskStatus.FAILED.value, result, error, settings.FAAS_RESULT_TTL,
                            only_if=TaskStatus.QUEUED.value if queued_only else "", finished_at=repr(time.time()))
    if not changed:
        raise NotCancellable(f"Task {task.id} has already {'started' if queued_only else 'finished'}.")
    Task.objects.filter(id=task.id).update(status=TaskStatus.FAILED, result=result, result_size=len(result),
                                           error=error, finished_at=timezone.now())
    mirror.send_control(r, "cancel", task_id=str(task.id))


def task_retry(*, task: Task) -> Task:
    """Run a finished task again as a new task linked to the old one."""
    if task.status not in mirror.FINAL:
        raise NotCancellable(f"Task {task.id} has not finished; only finished tasks can be retried.")
    return task_submit_batch(owner=task.owner, function=task.function, payloads=[bytes(task.payload)],
                             timeout=task.timeout, retry_of=task)[0]


_local = threading.local()  # one pub/sub connection per server thread, kept between long-polls


def _thread_pubsub():
    r = redis_client()
    pubsub = getattr(_local, "pubsub", None)
    if pubsub is None or pubsub.connection_pool is not r.connection_pool:
        pubsub = _local.pubsub = r.pubsub(ignore_subscribe_messages=True)
    return pubsub


def task_wait(*, owner, task_id, timeout: float) -> TaskView:
    """The task once it is final or `timeout` seconds have passed, woken through Redis
    pub/sub (no sleep loop). Subscribes before reading, so no wake-up is lost; the
    thread's subscription connection is reused, so a long-poll opens no connection."""
    tid = parse_uuid(task_id)
    if timeout <= 0:
        return task_view(owner=owner, task_id=tid)
    channel = mirror.done_channel(tid).encode()
    pubsub = _thread_pubsub()
    try:
        pubsub.subscribe(channel)
        view = task_view(owner=owner, task_id=tid)
        deadline = time.monotonic() + timeout
        while view.status not in mirror.FINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = pubsub.get_message(timeout=remaining)
            if message is not None and message["channel"] == channel:  # not a late one for an earlier wait
                done = mirror.parse_done(message["data"])  # the owner was checked before the wait
                view = (TaskView(str(tid), done.status, done.result, done.error) if done
                        else task_view(owner=owner, task_id=tid))
        pubsub.unsubscribe(channel)
    except redis.RedisError:
        _local.pubsub = None  # a broken connection is not reused
        pubsub.close()
        raise
    return view


def task_get(*, owner, task_id) -> Task:
    tid = parse_uuid(task_id)
    try:
        return Task.objects.select_related("function", "owner").get(id=tid, owner=_owner(owner))
    except Task.DoesNotExist:
        raise NotFound(f"No task with id {tid}.") from None


# --- dispatcher-side transitions, applied in batches --------------------------------------

def tasks_queued_since(since: datetime.datetime, *, after: tuple | None = None, limit: int = 500) -> list[tuple]:
    """(created_at, id) of QUEUED rows created since `since`, oldest first, after the
    (created_at, id) `after`: one page of the database's queue, without payloads."""
    rows = Task.objects.filter(status=TaskStatus.QUEUED, created_at__gte=since)
    if after is not None:
        rows = rows.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1]))
    return list(rows.order_by("created_at", "id").values_list("created_at", "id")[:limit])


def tasks_to_queue(task_ids: list) -> list[mirror.QueuedTask]:
    """The queue entries of QUEUED rows, rebuilt from the database (payloads included), in
    the order of `task_ids`."""
    rows = Task.objects.filter(id__in=task_ids, status=TaskStatus.QUEUED).values_list(
        "id", "function_id", "owner_id", "payload", "timeout", "attempts")
    found = {str(tid): _queue_entry(tid, fid, owner, payload, timeout, attempts + 1)
             for tid, fid, owner, payload, timeout, attempts in rows}
    return [found[str(t)] for t in task_ids if str(t) in found]


def tasks_mark_running(*, task_ids: list[str], worker_id: int | None, dispatched_at, attempts: int = 1) -> int:
    """Record that tasks were handed to a worker; never overwrites a final state (a cancel)."""
    return (Task.objects.filter(id__in=task_ids, status__in=[TaskStatus.QUEUED, TaskStatus.RUNNING])
            .update(status=TaskStatus.RUNNING, worker_id=worker_id, dispatched_at=dispatched_at, attempts=attempts))


@dataclass(frozen=True)
class Outcome:
    """A task's final state as the dispatcher records it."""

    task_id: str
    status: str
    result: bytes
    error: str
    started_at: object = None  # datetime or None
    finished_at: object = None
    worker_id: int | None = None
    attempts: int = 1


_OUTCOME_FIELDS = ["status", "result", "result_size", "error", "started_at", "finished_at", "worker", "attempts"]


def tasks_finish(outcomes: list[Outcome]) -> list[Outcome]:
    """Write final states with one prepared UPDATE run for every row (executemany): the
    Redis script already picked one winner per task. Django's bulk_update builds a CASE per
    field per row in Python, which cost more than the whole rest of the dispatcher.
    Returns the outcomes whose row does not exist yet (its insert has not committed)."""
    if not outcomes:
        return []
    meta, qn = Task._meta, connection.ops.quote_name
    fields = [meta.get_field(name) for name in _OUTCOME_FIELDS]
    sql = (f"UPDATE {qn(meta.db_table)} SET " + ", ".join(f"{qn(f.column)} = %s" for f in fields)
           + f" WHERE {qn(meta.pk.column)} = %s")
    now = timezone.now()
    rows = []
    for o in outcomes:
        values = [o.status, o.result, len(o.result), o.error, o.started_at, o.finished_at or now, o.worker_id,
                  o.attempts]
        rows.append([f.get_db_prep_save(v, connection) for f, v in zip(fields, values)]
                    + [meta.pk.get_db_prep_save(uuid.UUID(o.task_id), connection)])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, rows)
        updated = cursor.rowcount
    if updated >= len(outcomes):
        return []
    present = {str(i) for i in Task.objects.filter(id__in=[o.task_id for o in outcomes]).values_list("id", flat=True)}
    return [o for o in outcomes if o.task_id not in present]


def function_payloads(function_ids: list[str]) -> dict[str, bytes]:
    """Payloads straight from the database, for a dispatcher whose Redis lost them."""
    if not function_ids:
        return {}
    rows = Function.objects.filter(id__in=function_ids).values_list("id", "payload")
    return {str(fid): bytes(payload) for fid, payload in rows}


def worker_register(*, identity: str, mode: str, hostname: str, pid: int, processes: int) -> int:
    """Create or revive a worker's row; returns its id."""
    worker, _ = Worker.objects.update_or_create(identity=identity, defaults={
        "mode": mode, "hostname": hostname, "pid": pid, "processes": processes, "busy": 0, "alive": True,
        "draining": False, "last_heartbeat": timezone.now()})
    return worker.pk


def workers_update(states: dict[int, dict], done: dict[int, int] | None = None) -> None:
    """Apply heartbeat/busy/alive changes and add finished-task counts, one UPDATE per
    worker (workers are few)."""
    done = done or {}
    for worker_id in states.keys() | done.keys():
        fields = dict(states.get(worker_id, {}))
        if done.get(worker_id):
            fields["tasks_done"] = F("tasks_done") + done[worker_id]
        if "last_heartbeat" in fields and isinstance(fields["last_heartbeat"], float):
            fields["last_heartbeat"] = datetime.datetime.fromtimestamp(fields["last_heartbeat"], tz=datetime.UTC)
        Worker.objects.filter(pk=worker_id).update(**fields)


# --- operations console: queue-wide and worker actions ------------------------------------

def queue_purge(*, reason: str = "purged from the queue") -> list[str]:
    """FAIL every task still QUEUED, as cancelled, and take it off the stream; returns their ids.

    Redis decides which tasks were still waiting (a RUNNING task is left alone), then the
    database follows in chunks. A row may say RUNNING while Redis says QUEUED (a re-queued
    task), so both states are updated, as in `task_cancel`.
    """
    error = f"WorkerFailureException: {reason}"
    result = serialization.dumps(WorkerFailureException(reason))
    purged = mirror.purge_queued(redis_client(), result, error, settings.FAAS_RESULT_TTL, time.time())
    finished_at = timezone.now()
    for start in range(0, len(purged), 500):
        Task.objects.filter(id__in=purged[start:start + 500],
                            status__in=[TaskStatus.QUEUED, TaskStatus.RUNNING]).update(
            status=TaskStatus.FAILED, result=result, result_size=len(result), error=error, finished_at=finished_at)
    return purged


def worker_drain(*, identity: str) -> bool:
    """Ask the dispatchers to give a worker no new work; it finishes what it holds.

    The flag is the durable record the admin shows; the control message is what the
    dispatcher acts on. Returns False for a worker that is unknown or already dead.
    """
    updated = Worker.objects.filter(identity=identity, alive=True).update(draining=True)
    if updated:
        mirror.send_control(redis_client(), "drain", identity=identity)
    return bool(updated)
