"""A user's own tasks and functions, listed page by page, and the deletion of a function.

Pages are keyset-paginated on (created_at, id), newest first: a cursor names the last row
of a page, so a page costs one indexed query however deep the listing goes, and rows
inserted while a client pages through never shift what it has not read yet.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Q

from functions import services
from functions.models import Function, Task
from workers.protocol import FINAL_STATUSES, TaskStatus

DEFAULT_PAGE = 50
MAX_PAGE = 500
UNFINISHED = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
TASK_FIELDS = ("id", "function_id", "function__name", "status", "attempts", "error", "created_at", "started_at",
               "finished_at")


class BadQuery(ValueError):
    """A filter or cursor the listing cannot use; its message is the sentence the client sees."""


class FunctionInUse(Exception):
    """The function still has tasks that have not finished."""


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    next_cursor: str | None


def encode_cursor(created_at: datetime.datetime, row_id) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    try:
        stamp, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.datetime.fromisoformat(stamp), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise BadQuery(f"{cursor!r} is not a cursor this server gave out.") from None


def _page(rows, cursor: str | None, limit: int) -> tuple[list, str | None]:
    """One page of `rows` (a queryset of values dicts ordered newest first) after `cursor`."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        rows = rows.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=row_id))
    found = list(rows.order_by("-created_at", "-id")[:limit + 1])
    more = len(found) > limit
    found = found[:limit]
    return found, encode_cursor(found[-1]["created_at"], found[-1]["id"]) if more else None


def tasks_list(*, owner, status: str | None = None, function_id=None, since: datetime.datetime | None = None,
               until: datetime.datetime | None = None, cursor: str | None = None,
               limit: int = DEFAULT_PAGE) -> Page:
    """The caller's tasks, newest first, filtered. The database row is the durable record
    and lags Redis by up to one dispatcher flush, so unfinished rows on the page show
    Redis's live status (one round trip for the page)."""
    rows = Task.objects.filter(owner=services._owner(owner))
    if status:
        if status not in TaskStatus.__members__:
            raise BadQuery(f"{status!r} is not a status; use one of {', '.join(TaskStatus.__members__)}.")
        rows = rows.filter(status=status)
    if function_id:
        rows = rows.filter(function_id=services.parse_uuid(function_id))
    if since:
        rows = rows.filter(created_at__gte=since)
    if until:
        rows = rows.filter(created_at__lt=until)
    found, next_cursor = _page(rows.values(*TASK_FIELDS), cursor, limit)
    _overlay_live_status(found)
    return Page([_task_row(row) for row in found], next_cursor)


def _overlay_live_status(rows: list[dict]) -> None:
    unfinished = [row for row in rows if row["status"] not in FINAL_STATUSES]
    if not unfinished:
        return
    for row, live in zip(unfinished, services.task_store().statuses([str(r["id"]) for r in unfinished])):
        if live is not None:
            row["status"] = live


def _task_row(row: dict) -> dict:
    return {"task_id": str(row["id"]), "function_id": str(row["function_id"]), "function_name": row["function__name"],
            "status": row["status"], "attempts": row["attempts"], "created_at": row["created_at"],
            "started_at": row["started_at"], "finished_at": row["finished_at"],
            "error": (row["error"] or "").split("\n", 1)[0] if row["status"] == TaskStatus.FAILED.value else ""}


def functions_list(*, owner, cursor: str | None = None, limit: int = DEFAULT_PAGE) -> Page:
    """The caller's functions, newest first, without their payloads."""
    rows = Function.objects.filter(owner=services._owner(owner)).values("id", "name", "payload_size", "created_at")
    found, next_cursor = _page(rows, cursor, limit)
    return Page([_function_row(row) for row in found], next_cursor)


def _function_row(row: dict) -> dict:
    return {"function_id": str(row["id"]), "name": row["name"], "payload_size": row["payload_size"],
            "created_at": row["created_at"]}


def function_detail(*, owner, function_id) -> dict:
    """One function of the caller's, with how many of its tasks are in each status."""
    fid = services.parse_uuid(function_id)
    row = (Function.objects.filter(id=fid, owner=services._owner(owner))
           .values("id", "name", "payload_size", "created_at").first())
    if row is None:
        raise services.NotFound(f"No function with id {fid}.")
    counts = dict(Task.objects.filter(function_id=fid).values_list("status").annotate(n=Count("id")))
    return {**_function_row(row), "tasks": {s.value: counts.get(s.value, 0) for s in TaskStatus}}


def function_delete(*, owner, function_id) -> int:
    """Delete a function of the caller's and the record of its finished tasks. Refused
    (FunctionInUse) while any of its tasks is queued or running, as RQ and Celery users
    expect a queue never to lose work that was accepted; cancel those first. Returns how
    many task records went with it."""
    fid = services.parse_uuid(function_id)
    with transaction.atomic():
        function = Function.objects.select_for_update().filter(id=fid, owner=services._owner(owner)).only("id").first()
        if function is None:
            raise services.NotFound(f"No function with id {fid}.")
        busy = Task.objects.filter(function_id=fid, status__in=UNFINISHED).count()
        if busy:
            raise FunctionInUse(f"Function {fid} has {busy} unfinished task(s); cancel them or wait for them "
                                "to finish, then delete it.")
        removed = Task.objects.filter(function_id=fid).count()
        function.delete()
    services._function_owners.pop(fid, None)  # this process's owner cache; others forget within 30 s
    services.task_store().drop_function(fid)  # dispatchers read payloads from Redis first
    return removed
