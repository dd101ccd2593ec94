"""Every state change of functions and tasks, for views, admin actions and the dispatcher.

The web side writes the database row and the Redis mirror in one step: the row inside a
transaction, the Redis pipeline before it commits, so a Redis failure leaves nothing behind
and an acknowledged task is both durable and queued.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from functions.groupcommit import GroupInsert
from functions.models import Function, Task, Worker
from functions.taskrows import UNFINISHED, queue_entry
from functions.taskstore import TaskStore, store_for
from workers import serialization
from workers.exceptions import WorkerFailureException
from workers.protocol import FINAL_STATUSES, Result, TaskStatus
from workers.retrying import RetryPolicy, retry_record


class NotFound(Exception):
    """Raised when an id is malformed, unknown, or belongs to another user."""


class NotCancellable(Exception):
    """Raised when a task has already reached a final state."""


def task_store() -> TaskStore:
    """This process's task store (one connection pool per process)."""
    return store_for(settings.REDIS_URL)


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


def function_register(*, owner, name: str, payload: bytes, version: int = 1, digest: str = "",
                      retry: dict | None = None) -> Function:
    """Store a validated callable payload and cache it in Redis for the dispatchers; `retry`
    is the default retry policy of its tasks. (functions.versions decides the version and
    reuses identical bytes.)"""
    with transaction.atomic():
        function = Function.objects.create(owner=_owner(owner), name=name, payload=payload,
                                           payload_size=len(payload), version=version, digest=digest,
                                           retry_policy=retry)
        task_store().put_function(function.id, owner_key(owner), payload)
    return function


FUNCTION_CACHE_SECONDS = 30.0  # how long a server process trusts a function's owner without asking the database
_function_owners: dict[uuid.UUID, tuple[int | None, float, dict | None]] = {}  # owner, expiry, retry policy


def function_get(*, owner, function_id) -> Function:
    """The caller's function (without its payload); NotFound for anyone else's. Owners of
    recently used functions are remembered: functions never change hands."""
    fid = parse_uuid(function_id)
    owner_id = _owner(owner).pk if _owner(owner) else None
    cached = _function_owners.get(fid)
    if cached is not None and cached[1] > time.monotonic():
        if cached[0] != owner_id:
            raise NotFound(f"No function with id {fid}.")
        return Function(id=fid, owner_id=owner_id, retry_policy=cached[2])
    try:
        function = Function.objects.only("id", "owner_id", "name", "retry_policy").get(id=fid, owner=_owner(owner))
    except Function.DoesNotExist:
        raise NotFound(f"No function with id {fid}.") from None
    if len(_function_owners) > 10_000:
        _function_owners.clear()
    _function_owners[fid] = (function.owner_id, time.monotonic() + FUNCTION_CACHE_SECONDS, function.retry_policy)
    return function


_task_rows = GroupInsert()  # submits of this process's threads share transactions


def task_submit_batch(*, owner, function: Function, payloads: list[bytes], timeout: float | None = None,
                      retry_of: Task | None = None, received_at: float | None = None,
                      task_ids: list[uuid.UUID] | None = None,
                      companions_of: Callable[[list[Task]], list] | None = None,
                      limits: tuple[int | None, int | None] = (None, None),
                      not_before: float | None = None, retry: dict | None = None) -> list[Task]:
    """Queue many calls of one function: one Redis script call, then the rows' insert
    (grouped with other threads' submits: functions.groupcommit).

    Redis goes first so the SQLite write lock is held only for the insert itself, never
    across a network round trip. If the insert fails, the tasks are failed in Redis before
    the error reaches the client, so nothing unacknowledged ever runs to completion.
    `task_ids`, when given, are ids chosen beforehand (an idempotency key's claim names its task);
    `companions_of(tasks)` gives rows committed with the tasks (their audit entry);
    `limits` is (memory MiB, CPU seconds), each None for none;
    `not_before` (unix time; countdown, eta) keeps the tasks in the delayed set until then;
    `retry` (a policy) overrides the function's."""
    memory_mb, cpu_s = limits
    tasks = [Task(owner=_owner(owner), function=function, payload=p, payload_size=len(p),
                  timeout=timeout, retry_of=retry_of, memory_limit_mb=memory_mb, cpu_limit_s=cpu_s)
             for p in payloads]
    for task, task_id in zip(tasks, task_ids or ()):
        task.id = task_id
    policy = retry if retry is not None else function.retry_policy
    record = retry_record(RetryPolicy.from_dict(policy)) if policy else ""
    queued = [queue_entry(t.id, function.id, t.owner_id, p, timeout, 1, record, memory_mb, cpu_s)
              for t, p in zip(tasks, payloads)]
    store = task_store()
    store.enqueue(queued, received_at, not_before=not_before)
    try:
        _task_rows.insert(tasks, companions_of(tasks) if companions_of else ())
    except Exception as exc:
        _abandon(store, [t.task_id for t in queued])
        if isinstance(exc, IntegrityError):  # the function was deleted a moment ago
            _function_owners.pop(function.id, None)
            raise NotFound(f"No function with id {function.id}.") from None
        raise
    return tasks


def _failure(task_id, reason: str) -> Result:
    """A FAILED result the web decides (cancel, purge, a submit that could not be recorded)."""
    return Result(str(task_id), TaskStatus.FAILED.value, serialization.dumps(WorkerFailureException(reason)),
                  f"WorkerFailureException: {reason}", None, time.time())


def _abandon(store: TaskStore, task_ids: list[str]) -> None:
    """Fail tasks whose database row could not be written (their submit answered an error)."""
    store.finish([_failure(t, "the task could not be recorded") for t in task_ids], settings.FAAS_RESULT_TTL)


def task_submit(*, owner, function: Function, payload: bytes, timeout: float | None = None,
                received_at: float | None = None, not_before: float | None = None, retry: dict | None = None) -> Task:
    return task_submit_batch(owner=owner, function=function, payloads=[payload], timeout=timeout,
                             received_at=received_at, not_before=not_before, retry=retry)[0]


@dataclass(frozen=True)
class TaskView:
    """A task as the API shows it, from Redis or the database."""

    task_id: str
    status: str
    result: bytes | None
    error: str
    output: str = ""  # what the function printed or logged (its tail), once final
    progress: float | None = None  # what a running function last reported (workers.progress)
    progress_message: str = ""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def task_view(*, owner, task_id) -> TaskView:
    """The caller's task from the Redis mirror, falling back to the database."""
    tid = parse_uuid(task_id)
    data = task_store().read(tid)
    if data is not None and "status" in data:
        if data.get("owner", b"").decode() != owner_key(owner):
            raise NotFound(f"No task with id {tid}.")
        status = data["status"].decode()
        result = data.get("result") if status in FINAL_STATUSES else None
        progress = data.get("progress")
        return TaskView(str(tid), status, result, data.get("error", b"").decode(),
                        data.get("output", b"").decode(errors="replace"),
                        float(progress) if progress is not None else None,
                        data.get("progress_message", b"").decode(errors="replace"))
    row = (Task.objects.filter(id=tid, owner=_owner(owner))
           .values_list("status", "result", "error", "output").first())
    if row is None:
        raise NotFound(f"No task with id {tid}.")
    status, result, error, output = row
    return TaskView(str(tid), status, bytes(result) if result is not None and status in FINAL_STATUSES else None,
                    error or "", output or "")


def task_cancel(*, task: Task, reason: str = "cancelled", queued_only: bool = False) -> None:
    """Fail a task as cancelled: a QUEUED one never runs, a RUNNING one has its process
    stopped (unless `queued_only`). Redis decides, atomically, whether it was still unfinished."""
    store = task_store()
    failure = _failure(task.id, reason)
    [changed] = store.finish([failure], settings.FAAS_RESULT_TTL,
                             only_if=TaskStatus.QUEUED.value if queued_only else "")
    if not changed:
        raise NotCancellable(f"Task {task.id} has already {'started' if queued_only else 'finished'}.")
    Task.objects.filter(id=task.id, status__in=UNFINISHED).update(
        status=TaskStatus.FAILED, result=failure.result, result_size=len(failure.result), error=failure.error,
        finished_at=timezone.now())
    store.send_control("cancel", task_id=str(task.id))


def task_retry(*, task: Task) -> Task:
    """Run a finished task again as a new task linked to the old one."""
    if task.status not in FINAL_STATUSES:
        raise NotCancellable(f"Task {task.id} has not finished; only finished tasks can be retried.")
    return task_submit_batch(owner=task.owner, function=task.function, payloads=[bytes(task.payload)],
                             timeout=task.timeout, retry_of=task, limits=(task.memory_limit_mb, task.cpu_limit_s))[0]


_local = threading.local()  # one done-listener per server thread, kept between long-polls


def _thread_listener():
    store = task_store()
    listener = getattr(_local, "listener", None)
    if listener is None or getattr(_local, "store", None) is not store:
        listener = _local.listener = store.done_listener()
        _local.store = store
    return listener


def task_wait(*, owner, task_id, timeout: float) -> TaskView:
    """The task once it is final or `timeout` seconds have passed, woken through Redis
    pub/sub (no sleep loop). Subscribes before reading, so no wake-up is lost; the
    thread's subscription connection is reused, so a long-poll opens no connection."""
    tid = parse_uuid(task_id)
    if timeout <= 0:
        return task_view(owner=owner, task_id=tid)
    listener = _thread_listener()
    try:
        listener.watch([str(tid)])
        view = task_view(owner=owner, task_id=tid)
        deadline = time.monotonic() + timeout
        while view.status not in FINAL_STATUSES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = listener.next(remaining)
            if message is not None and message[0] == str(tid):  # not a late one for an earlier wait
                done = message[1]  # the owner was checked before the wait
                view = (TaskView(str(tid), done.status, done.result, done.error) if done
                        else task_view(owner=owner, task_id=tid))
        listener.unwatch([str(tid)])
    except redis.RedisError:
        _local.listener = None  # a broken connection is not reused
        listener.close()
        raise
    return view


LINGER_GAP = 0.01  # seconds: once enough tasks are final, a wait for many answers after this long without news
LINGER_MAX = 0.2  # seconds: ... and at most this long after enough were final, while completions keep coming


VIEW_FIELDS = ("status", "owner", "result", "error", "output")


def tasks_view(*, owner, task_ids: list[uuid.UUID]) -> dict[str, TaskView]:
    """The caller's tasks, by id, from Redis in one round trip (the database for those Redis
    forgot); NotFound naming the first id that is not the caller's."""
    who, views, missing = owner_key(owner), {}, []
    for tid, (status, task_owner, result, error, output) in zip(
            task_ids, task_store().fields([str(t) for t in task_ids], VIEW_FIELDS)):
        if status is None:
            missing.append(tid)
            continue
        if (task_owner or b"").decode() != who:
            raise NotFound(f"No task with id {tid}.")
        status = status.decode()
        views[str(tid)] = TaskView(str(tid), status, result if status in FINAL_STATUSES else None,
                                   (error or b"").decode(), (output or b"").decode(errors="replace"))
    if missing:
        rows = Task.objects.filter(id__in=missing, owner=_owner(owner)).values_list(
            "id", "status", "result", "error", "output")
        for tid, status, result, error, output in rows:
            final = result is not None and status in FINAL_STATUSES
            views[str(tid)] = TaskView(str(tid), status, bytes(result) if final else None, error or "", output or "")
        for tid in missing:
            if str(tid) not in views:
                raise NotFound(f"No task with id {tid}.")
    return views


def tasks_wait(*, owner, task_ids: list[uuid.UUID], timeout: float, at_least: int = 1,
               clock=time.monotonic) -> dict[str, TaskView]:
    """Many tasks at once, once `at_least` of them are final or `timeout` has passed, woken
    through the done messages (as `task_wait`). Once enough are final it lingers briefly
    while more keep finishing, so a stream of completions is answered in few requests."""
    task_ids = list(dict.fromkeys(task_ids))
    at_least = max(1, min(at_least, len(task_ids)))
    if timeout <= 0:
        return tasks_view(owner=owner, task_ids=task_ids)
    names = [str(t) for t in task_ids]
    listener = _thread_listener()
    try:
        listener.watch(names)
        try:
            views = tasks_view(owner=owner, task_ids=task_ids)  # after subscribing: no wake-up is lost
        except NotFound:
            listener.unwatch(names)
            raise
        final = sum(v.final for v in views.values())
        deadline, enough_at, news_at = clock() + timeout, None, None
        while final < len(views):
            now = clock()
            until = deadline
            if final >= at_least:
                enough_at, news_at = enough_at or now, news_at or now
                until = min(deadline, enough_at + LINGER_MAX, news_at + LINGER_GAP)
            if now >= until:
                break
            message = listener.next(until - now)  # None too for a subscribe confirmation
            if message is None or message[0] not in views or views[message[0]].final:
                continue  # nothing yet, or a late message of an earlier wait on this connection
            tid, done = message
            views[tid] = (TaskView(tid, done.status, done.result, done.error) if done
                          else task_view(owner=owner, task_id=tid))
            if views[tid].final:
                final, news_at = final + 1, clock()
        listener.unwatch(names)
    except redis.RedisError:
        _local.listener = None  # a broken connection is not reused
        listener.close()
        raise
    return views


def task_get(*, owner, task_id) -> Task:
    tid = parse_uuid(task_id)
    try:
        return Task.objects.select_related("function", "owner").get(id=tid, owner=_owner(owner))
    except Task.DoesNotExist:
        raise NotFound(f"No task with id {tid}.") from None


# --- operations console: queue-wide and worker actions ------------------------------------

def queue_purge(*, reason: str = "purged from the queue") -> list[str]:
    """FAIL every task still QUEUED, as cancelled, and take it off the stream; returns their ids.

    Redis decides which tasks were still waiting (a RUNNING task is left alone), then the
    database follows in chunks. A row may say RUNNING while Redis says QUEUED (a re-queued
    task), so both states are updated, as in `task_cancel`.
    """
    failure = _failure("", reason)
    purged = task_store().purge_queued(failure.result, failure.error, settings.FAAS_RESULT_TTL, time.time())
    finished_at = timezone.now()
    for start in range(0, len(purged), 500):
        Task.objects.filter(id__in=purged[start:start + 500], status__in=UNFINISHED).update(
            status=TaskStatus.FAILED, result=failure.result, result_size=len(failure.result), error=failure.error,
            finished_at=finished_at)
    return purged


def worker_drain(*, identity: str) -> bool:
    """Ask the dispatchers to give a worker no new work; it finishes what it holds.

    The flag is the durable record the admin shows; the control message is what the
    dispatcher acts on. Returns False for a worker that is unknown or already dead.
    """
    updated = Worker.objects.filter(identity=identity, alive=True).update(draining=True)
    if updated:
        task_store().send_control("drain", identity=identity)
    return bool(updated)
