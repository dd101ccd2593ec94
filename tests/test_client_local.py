"""Client behaviour that does not depend on the dispatcher mode, against a local-mode stack:
executor semantics, API errors, authentication, a __main__ script."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from functions.client import APIError, FaaSClient, FaaSExecutor
from tests import fixtures_functions as ff
from tests.client_shipping import main_script
from tests.helpers import wait_until
from tests.stack import REPO
from workers.exceptions import WorkerFailureException


def local(stack, processes: int = 2) -> FaaSClient:
    url = stack.web()
    stack.dispatcher("local", "-w", str(processes))
    return FaaSClient(url)


@pytest.fixture
def client(stack):
    with local(stack) as client:
        yield client


@pytest.fixture
def one_process(stack):
    with local(stack, processes=1) as client:
        yield client


def test_function_from_a_main_script_travels_with_its_helpers(client, tmp_path):
    script = main_script(tmp_path)
    done = subprocess.run([sys.executable, str(script), client.base_url], cwd=tmp_path, capture_output=True,
                          text=True, timeout=90, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "18"


def test_server_errors_raise_api_error_with_the_detail(stack):
    client = FaaSClient(stack.web())
    unknown = str(uuid.uuid4())
    with pytest.raises(APIError) as caught:
        client.submit(unknown, 1)
    assert caught.value.status_code == 404 and caught.value.detail == {"detail": f"No function with id {unknown}."}
    assert f"No function with id {unknown}." in str(caught.value)
    with pytest.raises(APIError) as caught:
        client.status("not-an-id")
    assert caught.value.status_code == 404
    with pytest.raises(APIError) as caught:
        client.register_payload("f", b"not a pickle")
    assert caught.value.status_code == 400 and "payload" in caught.value.detail
    with pytest.raises(TypeError, match="callable"):
        client.register(42)
    function_id = client.register(ff.add)
    with pytest.raises(TypeError, match=r"\(args, kwargs\)"):
        client.submit_batch(function_id, [(1, 2)])


def test_token_from_argument_or_environment(stack, monkeypatch):
    stack.extra_env["FAAS_ALLOW_ANONYMOUS"] = "0"
    url = stack.web()
    key = Token.objects.create(user=User.objects.create_user("carol", password="pw")).key
    monkeypatch.delenv("FAAS_TOKEN", raising=False)
    with pytest.raises(APIError) as caught:
        FaaSClient(url).register(ff.add)
    assert caught.value.status_code == 401
    with pytest.raises(APIError, match="Invalid token"):
        FaaSClient(url, token="wrong").register(ff.add)
    assert FaaSClient(url, token=key).register(ff.add)
    monkeypatch.setenv("FAAS_TOKEN", key)
    assert FaaSClient(url).register(ff.add)


def test_executor_as_completed_and_remote_exceptions(client):
    with FaaSExecutor(client, waiters=3) as executor:
        futures = [executor.submit(ff.sleep_then, 0.05 * (i % 4), i) for i in range(20)]
        failing = executor.submit(ff.raise_value_error, "bad")
        done = list(concurrent.futures.as_completed(futures + [failing], timeout=60))
        assert len(done) == 21 and [f.result() for f in futures] == list(range(20))
        with pytest.raises(ValueError, match="bad") as caught:
            failing.result()
        assert "raise_value_error" in caught.value.remote_traceback
        assert len(executor._functions) == 2  # sleep_then registered once for 20 calls


def test_executor_map_timeout_then_stop_everything(client):
    executor = FaaSExecutor(client)
    started = time.monotonic()
    results = executor.map(ff.sleep_then, [0, 30, 30])
    assert next(results) is None
    with pytest.raises(TimeoutError):
        list(executor.map(ff.sleep_then, [30], timeout=0.5))
    assert time.monotonic() - started < 5
    unfinished = list(executor._unresolved)
    executor.shutdown(wait=True, stop_running=True)
    assert time.monotonic() - started < 15
    stopped = [f for f in unfinished if not f.cancelled()]  # the rest had not started: plain cancelled
    assert stopped
    for future in stopped:
        with pytest.raises(WorkerFailureException, match="cancelled"):
            future.result(timeout=0)


def test_future_cancel_is_true_while_queued_and_false_once_running(one_process, tmp_path):
    client = one_process
    marker = tmp_path / "marker"
    with FaaSExecutor(client) as executor:
        blocker = executor.submit(ff.sleep_then, 60)
        wait_until(lambda: client.status(blocker.task_id) == "RUNNING", timeout=30)
        queued = executor.submit(ff.write_marker, str(marker))
        assert queued.task_id is not None  # reading it waits for the sender's request: the task is queued
        assert queued.cancel() is True and queued.cancelled()
        assert client.status(queued.task_id) == "FAILED"
        assert concurrent.futures.wait([queued], timeout=1).done == {queued}
        assert blocker.cancel() is False and blocker.running()
        assert client.cancel(blocker.task_id) is True  # stopping a running task is explicit
        with pytest.raises(WorkerFailureException, match="cancelled"):
            blocker.result(timeout=30)
        assert executor.submit(ff.add, 1, 2).result(timeout=30) == 3
    assert not marker.exists()


def test_a_future_cancelled_before_its_submit_is_sent_never_leaves(one_process, tmp_path):
    with FaaSExecutor(one_process, linger=5.0) as executor:  # the sender holds calls for 5 s
        unsent = executor.submit(ff.write_marker, str(tmp_path / "never"))
        assert unsent.cancel() is True and unsent.cancelled() and unsent.task_id is None
        assert executor.submit(ff.add, 1, 2).result(timeout=30) == 3
    assert not (tmp_path / "never").exists()


def test_shutdown_cancel_futures_and_no_submit_after(one_process, tmp_path):
    client = one_process
    executor = FaaSExecutor(client)
    blocker = executor.submit(ff.sleep_then, 1.0, "done")
    wait_until(lambda: client.status(blocker.task_id) == "RUNNING", timeout=30)
    queued = [executor.submit(ff.write_marker, str(tmp_path / f"m{i}")) for i in range(5)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert blocker.result(timeout=0) == "done"
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(ff.add, 1, 2)
    assert not list(tmp_path.glob("m*"))
