"""Resource limits per task (issue 16, item 3): memory and CPU seconds, set in the pool child
before the call; passing one fails the task with its own reason and replaces the child."""

from __future__ import annotations

import time
import uuid

import pytest

from functions.models import Task as TaskRow
from tests import fixtures_functions as ff
from tests import fixtures_standout as fs
from tests.platform import start_platform
from workers import limits
from workers.exceptions import WorkerFailureException
from workers.pool import ProcessPool
from workers.protocol import Task, Tasks, decode, encode
from workers.serialization import deserialize, dumps, loads, serialize

MIB = 1024 * 1024


def task(func, *args, memory_mb=None, cpu=None, deadline_s=None) -> Task:
    return Task(str(uuid.uuid4()), f"f-{func.__name__}", dumps(func), dumps((args, {})), deadline_s,
                memory_bytes=memory_mb and memory_mb * MIB, cpu_seconds=cpu)


def run(pool: ProcessPool, job: Task, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while not pool.free:  # a retired child's replacement is still starting
        assert time.monotonic() < end, "no free process"
        pool.poll(0.2)
    pool.submit(job)
    while time.monotonic() < end:
        for result in pool.poll(0.2):
            if result.task_id == job.task_id:
                return result
    raise AssertionError(f"no result within {timeout} s")


@pytest.mark.timeout(120)
def test_the_pool_enforces_memory_and_cpu_and_replaces_the_child():
    with ProcessPool(1) as pool:
        assert run(pool, task(fs.allocate, 64, memory_mb=256)).status == "COMPLETED"  # within the allowance
        before = pool.pids()
        over = run(pool, task(fs.allocate, 1024, memory_mb=256))
        assert over.status == "FAILED" and over.error == "WorkerFailureException: exceeded its memory limit of 256 MiB"
        assert isinstance(loads(over.result), WorkerFailureException) and not over.retry
        spun = run(pool, task(fs.spin, 60, cpu=1))
        assert spun.status == "FAILED" and spun.error == "WorkerFailureException: used its 1 s of CPU"
        assert not spun.retry
        after = run(pool, task(fs.allocate, 1024))  # no limit: the next task on the fresh child is not limited
        assert after.status == "COMPLETED", after.error
        assert run(pool, task(fs.spin, 1.5)).status == "COMPLETED"  # the CPU allowance was lifted too
        assert not set(before) & set(pool.pids())  # the child that ran out of memory was replaced


def test_limits_cross_the_wire_and_older_dispatchers_send_none():
    job = task(ff.add, 1, 2, memory_mb=512, cpu=30)
    assert decode(encode(Tasks((job,)))).tasks[0] == job
    frames = encode(Tasks((task(ff.add, 1, 2),)))
    frames[2] = b'[["t","f",null]]'  # a TASKS header from before limits existed
    assert decode(frames).tasks[0].memory_bytes is None


def test_a_worker_that_cannot_honour_a_limit_says_why(monkeypatch):
    monkeypatch.setattr(limits, "resource", None)
    with pytest.raises(limits.CannotHonour, match="no resource limits"):
        limits.apply(MIB, None)
    assert limits.apply(None, None)() is None  # no limits asked: nothing to honour


@pytest.mark.timeout(180)
def test_limits_through_the_api_per_task_and_per_function_default(stack):
    platform = start_platform(stack, "pull", 1)
    api = platform.api
    greedy = api.http.post(api.url + "/register_function", json={
        "name": "greedy", "payload": serialize(fs.allocate), "memory_mb": 128}).json()["function_id"]
    over = api.submit(greedy, 1024)
    error = api.failure(over)
    assert isinstance(error, WorkerFailureException) and str(error) == "exceeded its memory limit of 128 MiB"
    row = TaskRow.objects.get(id=over)
    assert (row.memory_limit_mb, row.cpu_limit_s) == (128, None)
    spinner = api.register(fs.spin)
    answer = api.http.post(api.url + "/execute_function", json={
        "function_id": spinner, "payload": serialize(((60,), {})), "cpu_seconds": 1})
    assert str(api.failure(answer.json()["task_id"])) == "used its 1 s of CPU"
    fine = api.http.post(api.url + "/execute_function", json={
        "function_id": greedy, "payload": serialize(((16,), {})), "memory_mb": 512})
    assert deserialize(api.result(fine.json()["task_id"])["result"]) == 16 * MIB
    bad = api.http.post(api.url + "/execute_function", json={
        "function_id": greedy, "payload": serialize(((1,), {})), "cpu_seconds": 0})
    assert bad.status_code == 400 and "cpu_seconds" in bad.json()
