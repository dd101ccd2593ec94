"""Output capture, soft time limits and child recycling through the real interfaces: HTTP,
the client, the admin, and real dispatcher and worker processes."""

from __future__ import annotations

import time

import pytest
import requests

from functions.client import FaaSClient
from functions.models import Task
from tests import operator_functions as of
from tests.helpers import wait_until
from tests.platform import start_platform
from workers.exceptions import SoftTimeLimitExceeded
from workers.serialization import serialize

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("mode", ["local", "push"])
def test_output_in_result_client_database_and_admin(stack, mode, django_user_model):
    platform = start_platform(stack, mode, 1)
    api = platform.api
    task_id = api.submit(api.register(of.chatty), 2)
    body = api.result(task_id)
    assert body["status"] == "COMPLETED"
    assert body["output"].splitlines() == ["hello from stdout", "a warning on stderr", "INFO user.code: step 1 of 2",
                                           "raw bytes"]
    with FaaSClient(api.url) as client:
        assert client.output(task_id) == body["output"]
        failing = client.submit(client.register(of.print_then_raise))
        with pytest.raises(ValueError):
            client.result(failing, timeout=30)
        assert client.output(failing) == "about to fail\n"
        silent = client.submit(client.register(of.silent))
        assert client.result(silent, timeout=30) == 1 and client.output(silent) == ""
        blocker = client.submit(client.register(of.clean_up_on_soft_limit), 1000)
        assert client.output(blocker) is None  # not final yet
        client.cancel(blocker)

    wait_until(lambda: Task.objects.filter(id=task_id, output__contains="hello from stdout").exists(), timeout=15,
               message="the output never reached the database")
    django_user_model.objects.create_superuser("ops", password="pw")
    session = requests.Session()
    session.get(api.url + "/admin/login/", timeout=5)
    session.post(api.url + "/admin/login/", data={"username": "ops", "password": "pw", "next": "/admin/",
                                                   "csrfmiddlewaretoken": session.cookies["csrftoken"]}, timeout=5)
    page = session.get(f"{api.url}/admin/functions/task/{task_id}/change/", timeout=5)
    assert page.status_code == 200 and "INFO user.code: step 1 of 2" in page.text


def test_long_poll_answers_carry_the_output(stack):
    platform = start_platform(stack, "local", 1)
    api = platform.api
    fid = api.register(of.chatty)
    response = api.http.post(api.url + "/execute_function", params={"wait": 30},
                             json={"function_id": fid, "payload": serialize(((1,), {}))})
    assert response.json()["status"] == "COMPLETED"
    assert "hello from stdout" in response.json()["output"]


def test_a_function_printing_megabytes_leaves_the_tail_and_the_worker_serving(stack):
    platform = start_platform(stack, "push", 1)
    api = platform.api
    body = api.result(api.submit(api.register(of.print_megabytes), 30), wait=60)
    assert body["status"] == "COMPLETED"
    assert body["output"].startswith("[output cut: ") and body["output"].endswith("the very last line\n")
    assert len(body["output"]) < 70 * 1024
    assert api.value(api.submit(api.register(of.silent))) == 1


@pytest.mark.parametrize("mode", ["local", "pull"])
def test_soft_timeout_from_the_dispatcher_reaches_the_function(stack, mode):
    platform = start_platform(stack, mode, 1, "--soft-timeout", "0.5", "-t", "20")
    api = platform.api
    assert api.value(api.submit(api.register(of.clean_up_on_soft_limit), 30)) == "cleaned up"
    with FaaSClient(api.url) as client:
        sleeper = client.submit(client.register(time.sleep), 30)
        with pytest.raises(SoftTimeLimitExceeded, match="0.5 s"):
            client.result(sleeper, timeout=30)
        quick = client.submit_with(client.register(of.silent), timeout=0.3)  # soft limit past its deadline: none
        assert client.result(quick, timeout=30) == 1


def test_workers_recycle_their_processes_between_tasks(stack):
    platform = start_platform(stack, "push", 1)
    platform.workers[0].stop()
    platform.add_worker(1, "--max-tasks-per-child", "2")
    api = platform.api
    fid = api.register(of.pid)
    pids = [api.value(api.submit(fid), wait=60) for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert "recycled after 2 tasks" in platform.workers[1].output()


def test_local_dispatcher_recycles_on_memory(stack):
    platform = start_platform(stack, "local", 1, "--max-memory-per-child", str(150 * 1024))
    api = platform.api
    first = api.value(api.submit(api.register(of.grow), 200), wait=60)
    assert api.value(api.submit(api.register(of.pid)), wait=60) != first


@pytest.mark.parametrize("mode", ["local", "push"])
def test_progress_reported_inside_a_function_shows_in_status_while_it_runs(stack, mode, tmp_path):
    platform = start_platform(stack, mode, 1)
    go = tmp_path / "go"
    with FaaSClient(platform.api.url) as client:
        task_id = client.submit(client.register(of.staged), str(go))
        assert wait_until(lambda: client.progress(task_id), timeout=30) == (0.4, "stage 2 of 5")
        body = platform.api.http.get(f"{platform.api.url}/status/{task_id}").json()
        assert body == {"task_id": task_id, "status": "RUNNING", "progress": 0.4, "progress_message": "stage 2 of 5"}
        go.touch()
        assert client.result(task_id, timeout=30) == "done"
        assert client.progress(task_id) is None
        assert client.status(task_id) == "COMPLETED"
