"""/healthz and /readyz: unauthenticated, fast, and saying which dependency is missing."""

from __future__ import annotations

import time

import pytest
import requests
from django.db import OperationalError
from django.test import Client, override_settings

from scripts.redis_server import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db


def test_ready_only_while_a_dispatcher_lives_and_no_token_needed(stack):
    stack.extra_env["FAAS_ALLOW_ANONYMOUS"] = "0"  # the API wants a token; the probes must not
    url = stack.web()
    assert requests.get(url + "/tasks", timeout=5).status_code in (401, 403)
    health = requests.get(url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}

    waiting = requests.get(url + "/readyz", timeout=5)
    assert waiting.status_code == 503
    body = waiting.json()
    assert body["status"] == "not ready"
    assert body["checks"]["redis"] == "ok" and body["checks"]["database"] == "ok"
    assert body["checks"]["dispatchers"].startswith("no live dispatcher")

    dispatcher = stack.dispatcher("local", "-w", "1")
    ready = requests.get(url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "dispatchers": "ok"}
    assert len(ready.json()["dispatchers"]) == 1

    dispatcher.stop()
    wait_until(lambda: requests.get(url + "/readyz", timeout=5).status_code == 503, timeout=15,
               message="readyz still 200 after the only dispatcher stopped")


def test_readyz_names_redis_when_it_is_down_and_answers_fast():
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        began = time.monotonic()
        response = Client().get("/readyz")
        took = time.monotonic() - began
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["redis"].startswith("Redis does not answer") and checks["database"] == "ok"
    assert checks["dispatchers"].startswith("unknown")
    assert took < 3.0


def test_readyz_names_the_database_when_it_fails(monkeypatch, redis_client):
    def broken(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr("functions.health.connection.cursor", broken)
    response = Client().get("/readyz/")
    assert response.status_code == 503
    assert "database is locked" in response.json()["checks"]["database"]
    assert response.json()["checks"]["redis"] == "ok"
