"""Signed webhooks: a task (or every task of a function) may name a URL that receives a POST
with the task's final state, signed as functions.webhook_signing describes.

Deliveries are sent by their own process, `manage.py run_webhooks` (Sender), never by the
dispatcher or the web tier: a receiver that is slow, down or hostile then costs only a
sender thread, never a dispatcher loop or a request thread. The database is the queue: a
delivery row is committed with its task (a companion of the submit, functions.groupcommit),
so no final state is missed while no sender runs; the sender finds finished tasks through
an index, leases due rows so several senders never send one twice at once, and retries
with exponential back-off. Delivery is at least once: receivers deduplicate by the
`FaaS-Delivery` header.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from functions import webhook_signing
from functions.models import Function, Task, WebhookDelivery
from workers import serialization

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # then the delivery GAVE_UP (visible in the admin)
FIRST_RETRY_SECONDS = 1.0  # doubles per failed attempt ...
MAX_RETRY_SECONDS = 3600.0  # ... up to an hour
SEND_TIMEOUT_SECONDS = 10.0  # a receiver slower than this counts as a failed attempt
LEASE_SECONDS = 3 * SEND_TIMEOUT_SECONDS  # a row being sent is not due again before this
RESULT_INLINE_BYTES = 1024 * 1024  # larger results are left out of the body (read them from /result)
FUNCTION_URL_CACHE_SECONDS = 30.0  # a function's default URL, remembered per server process
FINAL = [Task.Status.COMPLETED, Task.Status.FAILED]
State = WebhookDelivery.State


def secret_for(owner_key: str) -> str:
    """A user's signing secret, derived from the server's secret key (GET /webhooks/secret)."""
    return hmac.new(settings.SECRET_KEY.encode(), f"faas-webhook:{owner_key}".encode(), hashlib.sha256).hexdigest()


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: 1, 2, 4, ... capped at an hour."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))


_function_urls: dict = {}


def function_url(function_id) -> str:
    """A function's default webhook URL, cached briefly: submits must not query it each time."""
    cached = _function_urls.get(function_id)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    url = Function.objects.filter(id=function_id).values_list("webhook_url", flat=True).first() or ""
    if len(_function_urls) > 10_000:
        _function_urls.clear()
    _function_urls[function_id] = (url, time.monotonic() + FUNCTION_URL_CACHE_SECONDS)
    return url


def set_function_url(function: Function, url: str | None) -> None:
    if url is not None:
        Function.objects.filter(id=function.id).update(webhook_url=url)
        _function_urls.pop(function.id, None)


def deliveries_for(tasks: list[Task], owner_key: str, url: str) -> list[WebhookDelivery]:
    """Unsaved delivery rows, committed with the task rows."""
    return [WebhookDelivery(task_id=t.id, owner_key=owner_key, url=url) for t in tasks] if url else []


def body_of(delivery: WebhookDelivery, task: Task) -> bytes:
    body = {"event": "task.finished", "delivery_id": delivery.pk, "task_id": str(task.id),
            "function_id": str(task.function_id), "status": task.status,
            "finished_at": task.finished_at.isoformat() if task.finished_at else None}
    result = bytes(task.result) if task.result is not None else None
    if result is not None and len(result) <= RESULT_INLINE_BYTES:
        body["result"] = serialization.encode(result)
    elif result is not None:
        body["result_omitted"] = f"{len(result)} bytes: read GET /result/{task.id}"
    if task.status == Task.Status.FAILED:
        body["error"] = task.error
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str

    @property
    def accepted(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Finds due deliveries and sends them on a pool of threads; `loop(now)` is one pass."""

    def __init__(self, threads: int = 8, clock=time.time):
        self.clock = clock
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook")
        self.free = threading.Semaphore(threads)
        self.http = urllib3.PoolManager(num_pools=16, maxsize=threads, retries=False)

    def loop(self, now: float) -> int:
        """Promote finished tasks' deliveries, lease what is due, hand it to the threads;
        returns how many were handed over."""
        moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        (WebhookDelivery.objects.filter(state=State.WAITING, task__status__in=FINAL)
         .update(state=State.PENDING, next_attempt_at=moment))
        handed = 0
        due = (WebhookDelivery.objects.filter(state=State.PENDING, next_attempt_at__lte=moment)
               .order_by("next_attempt_at").values_list("id", "next_attempt_at")[:100])
        for delivery_id, due_at in due:
            if not self.free.acquire(blocking=False):
                break
            lease = moment + datetime.timedelta(seconds=LEASE_SECONDS)
            if not WebhookDelivery.objects.filter(id=delivery_id, next_attempt_at=due_at).update(
                    next_attempt_at=lease):  # another sender took it
                self.free.release()
                continue
            self.pool.submit(self._deliver, delivery_id)
            handed += 1
        return handed

    def _deliver(self, delivery_id: int) -> None:
        try:
            delivery = WebhookDelivery.objects.select_related("task").get(id=delivery_id)
            body = body_of(delivery, delivery.task)
            attempt = self.send(delivery, body)
            self.record(delivery, attempt, self.clock())
        except Exception:  # a sender thread must survive anything a row holds
            log.exception("webhook delivery %s failed unexpectedly", delivery_id)
        finally:
            close_old_connections()
            self.free.release()

    def send(self, delivery: WebhookDelivery, body: bytes) -> Attempt:
        headers = {"Content-Type": "application/json", "User-Agent": "faas-webhooks/1",
                   "FaaS-Event": "task.finished", "FaaS-Delivery": str(delivery.pk),
                   webhook_signing.HEADER: webhook_signing.header_value(secret_for(delivery.owner_key), body,
                                                                        self.clock())}
        try:
            response = self.http.request("POST", delivery.url, body=body, headers=headers, redirect=False,
                                         timeout=urllib3.Timeout(connect=5.0, read=SEND_TIMEOUT_SECONDS),
                                         preload_content=False)
            response.drain_conn()
            response.release_conn()
        except Exception as exc:  # refused, reset, timed out, bad URL: one failed attempt
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:1000])
        return Attempt(response.status, "" if 200 <= response.status < 300 else f"answered {response.status}")

    @staticmethod
    def record(delivery: WebhookDelivery, attempt: Attempt, now: float) -> None:
        """Apply one attempt's outcome: delivered, retried after back-off, or given up."""
        attempts = delivery.attempts + 1
        moment = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        fields = {"attempts": attempts, "last_status_code": attempt.status_code, "last_error": attempt.error}
        if attempt.accepted:
            fields.update(state=State.DELIVERED, delivered_at=moment, next_attempt_at=None)
        elif attempts >= MAX_ATTEMPTS:
            fields.update(state=State.GAVE_UP, next_attempt_at=None)
        else:
            fields.update(next_attempt_at=moment + datetime.timedelta(seconds=retry_delay(attempts)))
        WebhookDelivery.objects.filter(id=delivery.pk).update(**fields)

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        while not stop.is_set():
            try:
                self.loop(self.clock())
            except Exception:  # the database was away for a moment: try again next pass
                log.exception("webhook sender pass failed")
                close_old_connections()
            stop.wait(interval)
        self.pool.shutdown(wait=True)


def redeliver(queryset) -> int:
    """Send again now (an operator's admin action), whatever the earlier attempts said."""
    return queryset.exclude(state=State.WAITING).update(state=State.PENDING, next_attempt_at=timezone.now())
