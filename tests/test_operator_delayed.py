"""countdown / eta: a task waits in the store's delayed set, then reaches the queue; the
store and its in-memory twin, the promoter with a fake clock, and a running platform."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from dispatch.delayed import DelayedPromoter
from functions.client import APIError, FaaSClient
from functions.models import Task
from functions.taskstore import QueuedTask, TaskStore
from functions.taskstore.memory import MemoryTaskStore
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import start_platform

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_server, redis_client):
    if request.param == "redis":
        s = TaskStore.connect(redis_server.url)
        yield s
        s.close()
    else:
        yield MemoryTaskStore()


def queued(task_id: str) -> QueuedTask:
    return QueuedTask(task_id, "f1", "", b"args", 5.0, 1)


def test_delayed_tasks_reach_the_stream_only_when_due(store):
    store.ensure_group()
    now = time.time()
    store.enqueue([queued("a"), queued("b")], not_before=now + 100)
    store.enqueue([queued("c")], not_before=now + 200)
    assert store.statuses(["a", "c"]) == ["QUEUED", "QUEUED"]
    assert store.promote_due(now + 50) == 0
    assert store.exchange([], 60, "d1", 10, now)[1] == []  # nothing on the stream yet
    assert store.promote_due(now + 150) == 2
    claimed = store.exchange([], 60, "d1", 10, now)[1]
    assert sorted(c.task.task_id for c in claimed) == ["a", "b"]
    assert all(c.task.arguments == b"args" and c.task.timeout == 5.0 for c in claimed)
    assert store.promote_due(now + 150) == 0  # moved once only


def test_a_delayed_task_cancelled_while_waiting_never_runs(store):
    from workers.protocol import Result

    store.ensure_group()
    now = time.time()
    store.enqueue([queued("a")], not_before=now + 10)
    assert store.finish([Result("a", "FAILED", b"x", "WorkerFailureException: cancelled")], 60) == [True]
    assert store.promote_due(now + 20) == 0
    assert store.exchange([], 60, "d1", 10, now)[1] == []


def test_promoter_checks_a_few_times_a_second_on_the_wall_clock():
    now = [1000.0]
    calls = []

    class Store:
        def promote_due(self, when):
            calls.append(when)
            return 1

    promoter = DelayedPromoter(Store(), wall_clock=lambda: now[0], interval=0.2)
    assert promoter.tick() == 1
    now[0] += 0.1
    assert promoter.tick() == 0
    now[0] += 0.15
    assert promoter.tick() == 1
    assert calls == [1000.0, 1000.25]


def test_countdown_and_eta_through_the_api_and_the_client(stack):
    platform = start_platform(stack, "local", 1)
    with FaaSClient(platform.api.url) as client:
        fid = client.register(ff.add)
        began = time.time()
        later = client.submit_later(fid, (1, 2), countdown=2)
        now_ = client.submit_later(fid, (3, 4), eta=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
        assert client.result(now_, timeout=30) == 7
        assert client.status(later) == "QUEUED"
        assert client.result(later, timeout=30) == 3
        assert time.time() - began >= 2.0
        row = wait_until(lambda: Task.objects.filter(id=later, started_at__isnull=False).first(), timeout=15)
        assert (row.started_at - row.created_at).total_seconds() >= 1.9
        with pytest.raises(APIError) as both:
            client.submit_later(fid, (1, 2), countdown=1, eta="2030-01-01T00:00:00Z")
        assert both.value.status_code == 400 and "not both" in str(both.value.detail)
        body = platform.api.http.post(platform.api.url + "/execute_batch", json={
            "function_id": fid, "payloads": [client.encode_call((5, 5), {})], "countdown": 1}).json()
        assert client.result(body["task_ids"][0], timeout=30) == 10
