"""Admin actions end to end: a real web server and local dispatcher run the tasks the admin acts on."""

from __future__ import annotations

import pytest
import requests
from django.contrib.auth.models import User
from django.test import Client

from functions import services
from functions.models import Task
from functions.taskstore import keys
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from workers.serialization import deserialize, serialize

CHANGELIST = "/admin/functions/task/"


@pytest.fixture
def admin(stack):
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")
    return client


class Api:
    """The REST API of the stack under test, as a client script would use it."""

    def __init__(self, url: str):
        self.url = url

    def register(self, fn) -> str:
        return requests.post(f"{self.url}/register_function", json={"name": fn.__name__, "payload": serialize(fn)},
                             timeout=10).json()["function_id"]

    def submit(self, function_id: str, *args) -> str:
        body = {"function_id": function_id, "payload": serialize((args, {}))}
        return requests.post(f"{self.url}/execute_function", json=body, timeout=10).json()["task_id"]

    def status(self, task_id: str) -> str:
        return requests.get(f"{self.url}/status/{task_id}", timeout=10).json()["status"]

    def result(self, task_id: str, wait: float = 20) -> dict:
        return requests.get(f"{self.url}/result/{task_id}?wait={wait}", timeout=wait + 10).json()


def act(client: Client, action: str, task_ids: list[str], **extra) -> None:
    response = client.post(CHANGELIST, {"action": action, "_selected_action": task_ids, "index": 0, **extra})
    assert response.status_code == 302, response.content[:2000]


def db_task(task_id: str) -> Task:
    return Task.objects.get(id=task_id)


def test_cancel_stops_a_running_task_and_the_worker_keeps_serving(stack, admin):
    api = Api(stack.web())
    stack.dispatcher("local", "-w", "1")
    sleeper = api.submit(api.register(ff.sleep_then), 60, "too late")
    wait_until(lambda: api.status(sleeper) == "RUNNING", timeout=20)
    act(admin, "cancel_tasks", [sleeper])
    body = api.result(sleeper, wait=10)
    assert body["status"] == "FAILED", stack.logs()
    assert "cancelled by an operator" in str(deserialize(body["result"]))
    follow_up = api.submit(api.register(ff.add), 2, 3)
    assert deserialize(api.result(follow_up)["result"]) == 5, stack.logs()  # the process was replaced
    assert wait_until(lambda: db_task(sleeper).finished_at is not None and db_task(sleeper).status == "FAILED")


def test_a_task_cancelled_while_queued_never_runs(stack, admin, tmp_path):
    api = Api(stack.web())
    marker = tmp_path / "ran.log"
    waiting = api.submit(api.register(ff.record_interval), str(marker), 0.0)  # no dispatcher yet
    act(admin, "cancel_tasks", [waiting])
    stack.dispatcher("local", "-w", "1")
    after = api.submit(api.register(ff.add), 1, 1)
    assert deserialize(api.result(after)["result"]) == 2, stack.logs()
    assert api.result(waiting, wait=0)["status"] == "FAILED"
    assert not marker.exists()
    r = services.task_store().redis
    wait_until(lambda: r.xlen(keys.STREAM) == 0, message="the cancelled entry was not dropped")


def test_retry_runs_a_failed_task_again_as_a_linked_task(stack, admin, tmp_path):
    api = Api(stack.web())
    stack.dispatcher("local", "-w", "2")
    out = tmp_path / "missing-dir" / "calls.log"
    first = api.submit(api.register(ff.record_interval), str(out), 0.0)
    assert api.result(first)["status"] == "FAILED"  # the directory does not exist yet
    out.parent.mkdir()
    wait_until(lambda: db_task(first).status == "FAILED")  # the dispatcher's batched write
    act(admin, "retry_tasks", [first])
    retry = Task.objects.get(retry_of_id=first)
    body = api.result(str(retry.id))
    assert body["status"] == "COMPLETED", stack.logs()
    assert len(out.read_text().splitlines()) == 1
    assert wait_until(lambda: db_task(str(retry.id)).status == "COMPLETED")


def test_purge_fails_waiting_tasks_and_leaves_the_running_one(stack, admin):
    api = Api(stack.web())
    stack.dispatcher("local", "-w", "1")
    sleep_fn = api.register(ff.sleep_then)
    running = api.submit(sleep_fn, 60)
    wait_until(lambda: api.status(running) == "RUNNING", timeout=20)
    waiting = [api.submit(sleep_fn, 0, i) for i in range(5)]
    assert {api.status(t) for t in waiting} == {"QUEUED"}
    response = admin.post(CHANGELIST, {"action": "purge_queue", "_selected_action": [running], "post": "yes"})
    assert response.status_code == 302
    for task_id in waiting:
        body = api.result(task_id, wait=0)
        assert body["status"] == "FAILED" and "purged" in str(deserialize(body["result"]))
    assert api.status(running) == "RUNNING"
    act(admin, "cancel_tasks", [running])
    after = api.submit(api.register(ff.add), 4, 4)
    assert deserialize(api.result(after)["result"]) == 8, stack.logs()
    assert all(db_task(t).started_at is None for t in waiting)  # none of them ever ran
