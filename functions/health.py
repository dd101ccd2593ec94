"""Health endpoints for load balancers and systemd: /healthz (this process answers) and
/readyz (Redis, the database and at least one live dispatcher are reachable).

Plain Django views, not DRF: no authentication, throttling or content negotiation, so a
probe costs next to nothing and never needs a token. Every check has a short timeout of
its own, so a hung Redis or database makes /readyz answer 503 quickly instead of holding
the probe (and a server thread) until the load balancer gives up.
"""

from __future__ import annotations

import functools
import time

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from functions.taskstore import TaskStore

CHECK_TIMEOUT = 1.0  # seconds each Redis command of a probe may take


@functools.lru_cache(maxsize=4)
def _probe_store(url: str) -> TaskStore:
    """A store of its own with short timeouts: the API's connections wait longer, by design."""
    return TaskStore(redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT))


def check_redis(store: TaskStore) -> str | None:
    """None when Redis answers, else the reason."""
    try:
        store.ping()
    except redis.RedisError as exc:
        return f"Redis does not answer: {exc}"
    return None


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver's error: the probe reports it, never raises
        return f"the database does not answer: {type(exc).__name__}: {exc}"
    return None


@require_GET
def healthz(request):
    """The process is up and serving requests; checks nothing else, so it never flaps."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """200 when the platform can run a task submitted now; 503 with the reason of each
    check that failed otherwise."""
    began = time.monotonic()
    store = _probe_store(settings.REDIS_URL)
    problems = {}
    if (why := check_database()) is not None:
        problems["database"] = why
    if (why := check_redis(store)) is not None:
        problems["redis"] = why
        problems["dispatchers"] = "unknown: Redis does not answer"
        dispatchers = []
    else:
        try:
            dispatchers = store.live_dispatcher_names()  # each refreshes its key every 2 s
        except redis.RedisError as exc:
            dispatchers, problems["redis"] = [], f"Redis does not answer: {exc}"
        if not dispatchers:
            problems.setdefault("dispatchers", "no live dispatcher: submitted tasks would wait in the queue")
    body = {"status": "not ready" if problems else "ready",
            "checks": {name: problems.get(name, "ok") for name in ("database", "redis", "dispatchers")},
            "dispatchers": dispatchers, "took_ms": round((time.monotonic() - began) * 1000, 2)}
    return JsonResponse(body, status=503 if problems else 200)
