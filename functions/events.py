"""Server-sent events of one task: `GET /tasks/<id>/events` streams each state change and,
last, the result, as `text/event-stream` (what a browser's EventSource reads).

It is built on the long-poll's wake-up (services.task_wait over Redis pub/sub): the final
state arrives the moment it is written; intermediate changes (QUEUED → RUNNING) are seen
within CHECK_SECONDS, because the store announces only final states.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from rest_framework.renderers import BaseRenderer

from functions import services
from workers import serialization

CHECK_SECONDS = 0.5  # how soon a non-final change (QUEUED → RUNNING) is noticed
KEEPALIVE_SECONDS = 15.0  # a comment line now and then keeps proxies from closing an idle stream
MAX_STREAM_SECONDS = 3600.0
FINAL = ("COMPLETED", "FAILED")


class EventStreamRenderer(BaseRenderer):
    """Lets DRF accept `Accept: text/event-stream`; error bodies still go out as JSON text."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode() if data is not None else b""


def message(event: str, data: dict, event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream(*, owner, task_id, seconds: float, clock=time.monotonic) -> Iterator[bytes]:
    """The events of one task for up to `seconds`; the caller checked that the task is the owner's."""
    view = services.task_view(owner=owner, task_id=task_id)
    end, quiet_since, sent = clock() + seconds, clock(), 1
    yield message("status", {"task_id": view.task_id, "status": view.status}, sent)
    last = view.status
    while last not in FINAL:
        if clock() >= end:
            yield message("timeout", {"task_id": view.task_id, "status": last}, sent + 1)
            return
        view = services.task_wait(owner=owner, task_id=task_id, timeout=min(CHECK_SECONDS, end - clock()))
        if view.status != last:
            sent += 1
            last, quiet_since = view.status, clock()
            if last not in FINAL:
                yield message("status", {"task_id": view.task_id, "status": last}, sent)
        elif clock() - quiet_since >= KEEPALIVE_SECONDS:
            quiet_since = clock()
            yield b": keep-alive\n\n"
    body = {"task_id": view.task_id, "status": view.status,
            "result": serialization.encode(view.result) if view.result is not None else None}
    if view.status == "FAILED":
        body["error"] = view.error
    yield message("result", body, sent)
