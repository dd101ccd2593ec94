"""Crashes, restarts and security end to end: each test starts (and breaks) its own platform."""

from __future__ import annotations

import os
import signal
import time

import pytest

from functions.models import Task, Worker
from scripts.stack import Stack
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import MODES, Api, start_platform
from tests.stack import endpoint_of
from workers.exceptions import WorkerFailureException
from workers.serialization import serialize


def test_tasks_queued_while_no_dispatcher_runs_are_served_when_it_starts(stack):
    api = Api(stack.web())
    function_id = api.register(ff.add)
    task_ids = [api.submit(function_id, i, 1) for i in range(10)]
    time.sleep(0.2)  # nothing could run them: no dispatcher exists yet
    assert {api.status(t) for t in task_ids} == {"QUEUED"}
    stack.dispatcher("local", "-w", "2")
    assert [api.value(t) for t in task_ids] == list(range(1, 11))


@pytest.mark.parametrize("mode", MODES)
def test_dispatcher_killed_and_restarted_every_task_reaches_a_final_state(stack, mode):
    platform = start_platform(stack, mode)
    function_id = platform.api.register(ff.sleep_then)
    task_ids = [platform.api.submit(function_id, 0.3, i) for i in range(12)]
    wait_until(lambda: any(platform.api.status(t) != "QUEUED" for t in task_ids), timeout=15)
    platform.dispatcher.signal(signal.SIGKILL)
    platform.dispatcher.popen.wait(10)
    port = endpoint_of(platform.dispatcher).rsplit(":", 1)[1] if mode != "local" else None
    stack.dispatcher(mode, "-w", "2", port=int(port) if port else None)
    statuses = [platform.api.result(t, wait=60)["status"] for t in task_ids]
    assert set(statuses) <= {"COMPLETED", "FAILED"}
    assert statuses.count("COMPLETED") >= 6, statuses  # the ones not yet started run normally


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_work_spreads_over_two_workers(stack, mode):
    platform = start_platform(stack, mode)
    platform.add_worker(2)
    wait_until(lambda: Worker.objects.filter(alive=True, mode=mode).count() == 2, timeout=15)
    function_id = platform.api.register(ff.sleep_then)
    task_ids = [platform.api.submit(function_id, 0.5, i) for i in range(8)]
    assert [platform.api.value(t) for t in task_ids] == list(range(8))
    wait_until(lambda: Task.objects.filter(status="COMPLETED").count() == 8, timeout=10)
    per_worker = {w for w in Task.objects.values_list("worker__identity", flat=True)}
    assert len(per_worker) == 2


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_worker_killed_mid_task_fails_with_missed_heartbeat_and_a_new_worker_serves(stack, mode):
    platform = start_platform(stack, mode, 2, "--heartbeat-interval", "0.5", "--heartbeat-liveness", "3")
    function_id = platform.api.register(ff.sleep_then)
    task_id = platform.api.submit(function_id, 60, "never")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=15)
    platform.workers[0].signal(signal.SIGKILL)
    failure = platform.api.failure(task_id, wait=20)
    assert isinstance(failure, WorkerFailureException) and "missed heartbeat" in str(failure)
    wait_until(lambda: not Worker.objects.get(pid=platform.workers[0].pid).alive, timeout=10)
    platform.add_worker(2)
    assert platform.api.value(platform.api.submit(function_id, 0, "served")) == "served"


def test_pull_worker_killed_holding_a_task_fails_it_at_the_deadline(stack):
    """With heartbeats too slow to notice, the per-task deadline (-t) still fails the task."""
    platform = start_platform(stack, "pull", 1, "-t", "2", "--heartbeat-interval", "30")
    function_id = platform.api.register(ff.sleep_then)
    task_id = platform.api.submit(function_id, 60, "never")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=15)
    platform.workers[0].signal(signal.SIGKILL)
    started = time.monotonic()
    failure = platform.api.failure(task_id, wait=20)
    assert isinstance(failure, WorkerFailureException) and "timed out after 2 s" in str(failure)
    assert time.monotonic() - started < 2 + 4.0


def test_push_worker_reregisters_after_dispatcher_restart(stack):
    platform = start_platform(stack, "push", 2, "--heartbeat-interval", "0.5")
    function_id = platform.api.register(ff.add)
    assert platform.api.value(platform.api.submit(function_id, 1, 1)) == 2
    port = int(endpoint_of(platform.dispatcher).rsplit(":", 1)[1])
    platform.dispatcher.stop()
    stack.dispatcher("push", "--heartbeat-interval", "0.5", port=port)
    assert platform.api.value(platform.api.submit(function_id, 2, 2), wait=30) == 4
    assert platform.workers[0].alive()


def test_retries_requeue_a_task_lost_with_its_worker(stack):
    platform = start_platform(stack, "push", 1, "--heartbeat-interval", "0.5", "--retries", "1")
    function_id = platform.api.register(ff.sleep_then)
    task_id = platform.api.submit(function_id, 2, "second time lucky")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=15)
    platform.workers[0].signal(signal.SIGKILL)
    platform.add_worker(1)
    assert platform.api.value(task_id, wait=40) == "second time lucky"
    wait_until(lambda: Task.objects.get(id=task_id).attempts == 2, timeout=10)


def test_first_sigterm_drains_running_tasks(stack):
    platform = start_platform(stack, "local")
    task_id = platform.api.submit(platform.api.register(ff.sleep_then), 1.5, "finished")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=15)
    os.killpg(platform.dispatcher.pid, signal.SIGTERM)
    assert platform.dispatcher.popen.wait(20) == 0
    assert platform.api.value(task_id, wait=5) == "finished"


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_curve_worker_off_the_allow_list_gets_no_work(stack, tmp_path, mode):
    import shutil

    import zmq.auth

    from workers.security import generate_keys

    keys = tmp_path / "keys"
    generate_keys(keys)
    stranger = tmp_path / "stranger"
    (stranger / "workers").mkdir(parents=True)
    shutil.copy(keys / "server.key", stranger / "server.key")
    zmq.auth.create_certificates(str(stranger / "workers"), "worker")  # a keypair nobody authorized

    api = Api(stack.web())
    dispatcher = stack.dispatcher(mode, "--keys", str(keys))
    stack.worker(mode, 1, endpoint_of(dispatcher), "--keys", str(stranger))
    task_id = api.submit(api.register(ff.add), 20, 22)
    time.sleep(2.0)  # give the stranger every chance to be (wrongly) served
    assert api.status(task_id) == "QUEUED"
    stack.worker(mode, 1, endpoint_of(dispatcher), "--keys", str(keys))
    assert api.value(task_id) == 42


def test_redis_restart_loses_no_acknowledged_task(transactional_db, tmp_path):
    """Redis with append-only persistence restarts under a running platform: the running
    task finishes, queued ones run, and the API answers 503 (not 500) while Redis is away."""
    from django.conf import settings

    from scripts.redis_server import RedisServer
    from tests.conftest import database_url

    server = RedisServer(appendonly=True).start()
    stack = Stack(server.url, database_url(settings.DATABASES["default"]), tmp_path)
    try:
        platform = start_platform(stack, "push")
        function_id = platform.api.register(ff.sleep_then)
        running = platform.api.submit(function_id, 2.0, "survived")
        queued = [platform.api.submit(function_id, 0.1, i) for i in range(4)]
        wait_until(lambda: platform.api.status(running) == "RUNNING", timeout=15)
        server.stop()
        response = platform.api.http.post(platform.api.url + "/execute_function",
                                          json={"function_id": function_id, "payload": serialize(((0,), {}))})
        assert response.status_code == 503 and "Retry" in response.json()["detail"]
        server.start()
        assert platform.api.value(running, wait=40) == "survived"
        assert [platform.api.value(t, wait=40) for t in queued] == [0, 1, 2, 3]
        assert platform.api.value(platform.api.submit(function_id, 0, "after")) == "after"
    finally:
        stack.close()
        server.cleanup()


@pytest.mark.parametrize("dispatcher_running", [True, False], ids=["dispatcher-running", "dispatcher-started-after"])
def test_tasks_queued_when_redis_restarts_empty_are_queued_again(transactional_db, tmp_path, dispatcher_running):
    """Redis restarts without its data (no append-only file): the tasks that waited in its
    stream are queued again from the database, by the running dispatcher once Redis is back
    or by one started afterwards; a task that was running keeps its result."""
    from django.conf import settings

    from scripts.redis_server import RedisServer
    from tests.conftest import database_url

    server = RedisServer(appendonly=False).start()
    stack = Stack(server.url, database_url(settings.DATABASES["default"]), tmp_path)
    try:
        api = Api(stack.web())
        function_id = api.register(ff.sleep_then)
        running = None
        if dispatcher_running:
            dispatcher = stack.dispatcher("local", "-w", "1")
            running = api.submit(function_id, 1.5, "kept")
            wait_until(lambda: api.status(running) == "RUNNING", timeout=15)
        queued = [api.submit(function_id, 0, i) for i in range(4)]  # the one process is busy, or none runs
        server.restart()
        assert server_is_empty(server)
        if not dispatcher_running:
            dispatcher = stack.dispatcher("local", "-w", "1")
        if running is not None:
            assert api.value(running, wait=40) == "kept"
        assert [api.value(t, wait=40) for t in queued] == [0, 1, 2, 3]
        assert "re-queued 4 task(s) that Redis had lost" in dispatcher.output()
    finally:
        stack.close()
        server.cleanup()


def server_is_empty(server) -> bool:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return client.dbsize() == 0
    finally:
        client.close()


def test_script_flush_under_a_running_platform_loses_nothing(stack, redis_client):
    """The web and the dispatcher run their Lua scripts by hash; when Redis forgets them
    (SCRIPT FLUSH), both load them again: the running task is stored, new ones run."""
    platform = start_platform(stack, "push")
    function_id = platform.api.register(ff.sleep_then)
    running = platform.api.submit(function_id, 1.0, "stored")
    wait_until(lambda: platform.api.status(running) == "RUNNING", timeout=15)
    redis_client.script_flush()
    assert platform.api.value(running, wait=30) == "stored"
    redis_client.script_flush()
    assert [platform.api.value(platform.api.submit(function_id, 0, i), wait=30) for i in range(3)] == [0, 1, 2]
    assert "Traceback" not in platform.dispatcher.output()


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_drained_worker_finishes_its_task_and_gets_no_new_work(stack, mode):
    from functions import services

    platform = start_platform(stack, mode)
    platform.add_worker(2)
    wait_until(lambda: Worker.objects.filter(alive=True, mode=mode).count() == 2, timeout=15)
    function_id = platform.api.register(ff.sleep_then)
    held = platform.api.submit(function_id, 1.0, "held")
    wait_until(lambda: Task.objects.filter(id=held, worker__isnull=False).exists(), timeout=15)
    drained = Task.objects.get(id=held).worker.identity
    assert services.worker_drain(identity=drained)
    wait_until(lambda: f"worker {drained} is draining" in platform.dispatcher.output(), timeout=10)
    later = [platform.api.submit(function_id, 0.2, i) for i in range(6)]
    assert platform.api.value(held) == "held"
    assert [platform.api.value(t) for t in later] == list(range(6))
    wait_until(lambda: Task.objects.filter(id__in=later, worker__isnull=False).count() == 6, timeout=10)
    assert drained not in set(Task.objects.filter(id__in=later).values_list("worker__identity", flat=True))
