"""The Python client and executor against a real running stack, in every dispatcher mode."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from functions.client import FaaSClient, FaaSExecutor
from tests import fixtures_functions as ff
from tests.client_shipping import install_user_module
from tests.helpers import wait_until
from tests.stack import Stack, endpoint_of
from workers.exceptions import FunctionFailedException, WorkerFailureException

MODES = ["local", "pull", "push"]


@pytest.fixture(params=MODES)
def mode(request) -> str:
    if request.param != "local":
        pytest.importorskip(f"dispatch.{request.param}")
        pytest.importorskip(f"workers.{request.param}_worker")
    return request.param


def start(stack: Stack, mode: str, processes: int = 2) -> FaaSClient:
    """Web server, dispatcher and workers with `processes` processes in all; a client for them."""
    url = stack.web()
    dispatcher = stack.dispatcher(mode, "-w", str(processes))
    if mode != "local":
        stack.worker(mode, processes, endpoint_of(dispatcher))
    return FaaSClient(url)


@pytest.fixture
def client(stack, mode):
    with start(stack, mode) as client:
        yield client


@pytest.fixture
def one_process(stack, mode):
    """A platform that runs one task at a time, so later tasks stay QUEUED behind a blocker."""
    with start(stack, mode, processes=1) as client:
        yield client


def test_submit_status_result(client):
    function_id = client.register(ff.add)
    task_id = client.submit(function_id, 2, b=3)
    assert client.result(task_id, timeout=30) == 5
    assert client.status(task_id) == "COMPLETED"


def test_call_runs_and_answers_in_one_request(client):
    function_id = client.register(ff.add)
    assert client.call(function_id, 2, b=3) == 5
    with pytest.raises(ValueError, match="called") as caught:
        client.call(client.register(ff.raise_value_error), "called")
    assert "raise_value_error" in caught.value.remote_traceback
    assert client.call(client.register(ff.sleep_then_clock), 0.2) <= time.time()


def test_function_from_a_module_the_workers_cannot_import(client, tmp_path, monkeypatch):
    user = install_user_module(tmp_path, monkeypatch)
    function_id = client.register(user.compute)
    assert client.result(client.submit(function_id, 2), timeout=30) == 3 * 2 + 1 + 100 + 2
    assert client.result(client.submit(client.register(user.where_am_i)), timeout=30) == "not importable"
    with pytest.raises(user.DetailedError, match="nope") as caught:
        client.result(client.submit(client.register(user.fail), "nope"), timeout=30)
    assert caught.value.detail == 4


def test_remote_exception_is_reraised_with_its_type_and_traceback(client):
    with pytest.raises(ValueError, match="nope") as caught:
        client.result(client.submit(client.register(ff.raise_value_error), "nope"), timeout=30)
    assert "raise_value_error" in caught.value.remote_traceback
    with pytest.raises(KeyError) as caught:
        client.result(client.submit(client.register(ff.nested_failure)), timeout=30)
    assert "_helper_that_fails" in caught.value.remote_traceback
    with pytest.raises(FunctionFailedException):
        client.result(client.submit(client.register(ff.return_unpicklable)), timeout=30)
    with pytest.raises(FunctionFailedException, match="SystemExit"):  # never a SystemExit in the caller
        client.result(client.submit(client.register(ff.raise_system_exit)), timeout=30)


def test_long_poll_answers_right_after_the_task_finishes(client):
    function_id = client.register(ff.sleep_then_clock)
    client.result(client.submit(function_id, 0), timeout=30)  # processes warm
    for seconds in (0.3, 1.0):
        finished_at = client.result(client.submit(function_id, seconds), timeout=30)
        gap = time.time() - finished_at
        assert 0 <= gap < 0.5, f"the result arrived {gap:.3f} s after the task finished"


def test_result_times_out_when_the_task_is_still_running(client):
    task_id = client.submit(client.register(ff.sleep_then), 30)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.result(task_id, timeout=0.5)
    assert 0.45 <= time.monotonic() - started < 2.0
    assert client.status(task_id) in ("QUEUED", "RUNNING")
    assert client.cancel(task_id) is True


def test_batch_of_a_thousand_tasks(client):
    function_id = client.register(ff.add)
    task_ids = client.submit_batch(function_id, [((i,), {"b": 1}) for i in range(1000)])
    assert len(task_ids) == len(set(task_ids)) == 1000
    assert [client.result(t, timeout=120) for t in task_ids] == [i + 1 for i in range(1000)]
    assert {client.status(t) for t in task_ids[::50]} == {"COMPLETED"}


def test_cancel_a_queued_task_it_never_runs(one_process, tmp_path):
    client = one_process
    blocker = client.submit(client.register(ff.sleep_then), 60)
    wait_until(lambda: client.status(blocker) == "RUNNING", timeout=30)
    marker = tmp_path / "marker"
    queued = client.submit(client.register(ff.write_marker), str(marker))
    assert client.status(queued) == "QUEUED"
    assert client.cancel(queued) is True
    assert client.cancel(queued) is False  # already final
    with pytest.raises(WorkerFailureException, match="cancelled"):
        client.result(queued, timeout=5)
    assert client.cancel(blocker) is True
    assert client.result(client.submit(client.register(ff.add), 1, 2), timeout=30) == 3
    assert not marker.exists()


def test_cancel_a_running_task_stops_its_process(one_process, tmp_path):
    client = one_process
    pid_file = tmp_path / "pid"
    task_id = client.submit(client.register(ff.write_pid_then_sleep), str(pid_file))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30))
    assert client.status(task_id) == "RUNNING"
    assert client.cancel(task_id) is True
    wait_until(lambda: not process_alive(pid), timeout=10, message=f"process {pid} still runs after cancel")
    assert client.status(task_id) == "FAILED"
    with pytest.raises(WorkerFailureException, match="cancelled"):
        client.result(task_id, timeout=5)
    assert client.result(client.submit(client.register(ff.add), 1, 2), timeout=30) == 3


def process_alive(pid: int) -> bool:
    """False once the process is gone or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# --- the executor, in every mode ------------------------------------------------------------

def test_executor_map_keeps_order(client):
    with FaaSExecutor(client) as executor:
        assert list(executor.map(ff.add, range(200), range(200))) == [2 * i for i in range(200)]
        assert len(executor._by_digest) == 1  # registered once
