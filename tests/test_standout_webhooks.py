"""Signed webhooks and server-sent events (issue 16, item 4): final states pushed, not polled."""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User

from functions import services, webhook_signing, webhooks
from functions.models import Task, WebhookDelivery
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import start_platform
from workers.serialization import deserialize, serialize

SECRET = "s3cret"


# --- signatures and back-off: pure rules, with an injected clock ---------------------------

def test_a_signature_verifies_and_a_tampered_or_stale_one_does_not():
    body = b'{"task_id":"t","status":"COMPLETED"}'
    header = webhook_signing.header_value(SECRET, body, now=1_000_000)
    assert webhook_signing.verify(SECRET, header, body, now=1_000_010) == 1_000_000
    with pytest.raises(webhook_signing.SignatureError, match="does not match"):
        webhook_signing.verify(SECRET, header, body.replace(b"COMPLETED", b"FAILED"), now=1_000_010)
    with pytest.raises(webhook_signing.SignatureError, match="does not match"):
        webhook_signing.verify("another secret", header, body, now=1_000_010)
    with pytest.raises(webhook_signing.SignatureError, match="replayed or delayed"):
        webhook_signing.verify(SECRET, header, body, now=1_000_000 + 301)
    with pytest.raises(webhook_signing.SignatureError, match="no FaaS-Signature"):
        webhook_signing.verify(SECRET, None, body)


def test_retries_back_off_exponentially_then_give_up(db, redis_client):
    assert [webhooks.retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert webhooks.retry_delay(40) == webhooks.MAX_RETRY_SECONDS
    owner = User.objects.create_user("alice")
    function = services.function_register(owner=owner, name="f", payload=serialize(ff.add).encode())
    task = services.task_submit_batch(owner=owner, function=function, payloads=[b"\x80\x04N."])[0]
    delivery = WebhookDelivery.objects.create(task=task, owner_key="1", url="http://127.0.0.1:9/")
    now = 1_700_000_000.0
    for attempt in range(1, webhooks.MAX_ATTEMPTS):
        webhooks.Sender.record(delivery, webhooks.Attempt(503, "answered 503"), now)
        delivery.refresh_from_db()
        assert delivery.attempts == attempt and delivery.state == "WAITING"
        assert delivery.next_attempt_at == datetime.datetime.fromtimestamp(now + 2 ** (attempt - 1), datetime.UTC)
    webhooks.Sender.record(delivery, webhooks.Attempt(None, "ConnectionRefusedError"), now)
    delivery.refresh_from_db()
    assert delivery.state == "GAVE_UP" and delivery.next_attempt_at is None


# --- end to end: a receiver on 127.0.0.1 checks every signature -----------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; `answers[path]` is a list of status
    codes to give first (then 200); `/slow` holds its request until released."""

    def __init__(self):
        self.got: list[dict] = []
        self.answers: dict[str, list[int]] = {}
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/slow":
                    outer.release.wait(30)
                queued = outer.answers.get(self.path) or []
                code = queued.pop(0) if queued else 200
                outer.got.append({"path": self.path, "headers": dict(self.headers), "body": body, "code": code})
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, path: str) -> list[dict]:
        return [g for g in self.got if g["path"] == path and g["code"] == 200]

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def receiver():
    started = Receiver()
    yield started
    started.close()


def test_finished_tasks_are_posted_signed_retried_and_visible(stack, receiver):
    platform = start_platform(stack, "local", 2)
    stack.spawn("webhooks", [sys.executable, "manage.py", "run_webhooks"])
    api = platform.api
    secret = api.http.get(api.url + "/webhooks/secret").json()["secret"]
    function_id = api.register(ff.add)
    receiver.answers["/flaky"] = [500]  # the first attempt is refused: it must be tried again
    body = {"function_id": function_id, "payload": serialize(((20, 22), {})), "webhook_url": receiver.url + "/flaky"}
    task_id = api.http.post(api.url + "/execute_function", json=body).json()["task_id"]
    wait_until(lambda: receiver.delivered("/flaky"), timeout=60, message="no delivery")
    got = receiver.delivered("/flaky")[0]
    raw = got["body"]
    assert webhook_signing.verify(secret, got["headers"]["FaaS-Signature"], raw)
    with pytest.raises(webhook_signing.SignatureError):  # the same delivery, tampered with, fails
        webhook_signing.verify(secret, got["headers"]["FaaS-Signature"], raw.replace(b"COMPLETED", b"FAILED"))
    payload = json.loads(raw)
    assert payload["task_id"] == task_id and payload["status"] == "COMPLETED"
    assert deserialize(payload["result"]) == 42
    assert got["headers"]["FaaS-Event"] == "task.finished"
    assert [g["code"] for g in receiver.got if g["path"] == "/flaky"] == [500, 200]
    delivery = WebhookDelivery.objects.get(task_id=task_id)
    wait_until(lambda: WebhookDelivery.objects.get(task_id=task_id).state == "DELIVERED", timeout=30)
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.last_status_code == 200
    assert str(delivery.pk) == got["headers"]["FaaS-Delivery"]


def test_a_functions_webhook_covers_its_failed_tasks_and_a_slow_receiver_blocks_no_one(stack, receiver):
    platform = start_platform(stack, "local", 2)
    stack.spawn("webhooks", [sys.executable, "manage.py", "run_webhooks", "--threads", "4"])
    api = platform.api
    slow = api.http.post(api.url + "/register_function", json={
        "name": "slow", "payload": serialize(ff.add), "webhook_url": receiver.url + "/slow"}).json()["function_id"]
    failing = api.http.post(api.url + "/register_function", json={
        "name": "fails", "payload": serialize(ff.raise_value_error),
        "webhook_url": receiver.url + "/fast"}).json()["function_id"]
    api.submit(slow, 1, 2)
    wait_until(lambda: Task.objects.filter(function_id=slow, status="COMPLETED").exists(), timeout=30)
    started = time.monotonic()
    failed_id = api.submit(failing, "no good")
    wait_until(lambda: receiver.delivered("/fast"), timeout=30, message="the fast receiver waited on the slow one")
    assert not receiver.got or all(g["path"] != "/slow" for g in receiver.got)  # still held open
    assert time.monotonic() - started < webhooks.SEND_TIMEOUT_SECONDS
    payload = json.loads(receiver.delivered("/fast")[0]["body"])
    assert payload["task_id"] == failed_id and payload["status"] == "FAILED"
    assert "no good" in payload["error"] and isinstance(deserialize(payload["result"]), ValueError)
    receiver.release.set()
    wait_until(lambda: receiver.delivered("/slow"), timeout=30)


def test_admin_lists_deliveries_and_sends_again(admin_client, db, redis_client):
    owner = User.objects.create_user("alice")
    function = services.function_register(owner=owner, name="f", payload=serialize(ff.add).encode())
    task = services.task_submit_batch(owner=owner, function=function, payloads=[b"\x80\x04N."])[0]
    delivery = WebhookDelivery.objects.create(task=task, owner_key="1", url="http://127.0.0.1:9/hook",
                                              state="GAVE_UP", attempts=8, last_error="ConnectionRefusedError")
    page = admin_client.get("/admin/functions/webhookdelivery/").content.decode()
    assert "http://127.0.0.1:9/hook" in page and "gave up" in page
    admin_client.post("/admin/functions/webhookdelivery/", {"action": "redeliver", "index": 0,
                                                             "_selected_action": [str(delivery.pk)]})
    delivery.refresh_from_db()
    assert delivery.state == "PENDING" and delivery.next_attempt_at is not None


# --- server-sent events ---------------------------------------------------------------------

def read_events(response) -> list[tuple[str, dict]]:
    events, kind = [], None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
            if kind in ("result", "timeout"):
                break
    return events


def test_task_events_stream_each_state_and_the_result(stack):
    platform = start_platform(stack, "local", 1)
    api = platform.api
    function_id = api.register(ff.sleep_then)
    task_id = api.submit(function_id, 1.5, 7)
    with api.http.get(f"{api.url}/tasks/{task_id}/events", stream=True, timeout=30,
                      headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(response)
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "COMPLETED" and "RUNNING" in statuses
    assert events[-1][0] == "result" and deserialize(events[-1][1]["result"]) == 7
    finished = api.http.get(f"{api.url}/tasks/{task_id}/events", stream=True, timeout=30)
    assert [k for k, _ in read_events(finished)] == ["status", "result"]  # already final: answered at once
    missing = api.http.get(f"{api.url}/tasks/6f1b6a6e-0000-4000-8000-000000000000/events",
                           headers={"Accept": "text/event-stream"})
    assert missing.status_code == 404 and "No task" in missing.text
    sleeper = api.submit(function_id, 30)
    short = api.http.get(f"{api.url}/tasks/{sleeper}/events?timeout=1", stream=True)
    assert read_events(short)[-1][0] == "timeout"
    api.http.post(f"{api.url}/cancel/{sleeper}")  # the pool's process is not held until teardown
