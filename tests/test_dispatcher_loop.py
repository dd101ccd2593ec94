"""The dispatcher core driven one `loop(now)` at a time, with a fake mode and a fake clock,
against the real test Redis and database."""

from __future__ import annotations

import time

import pytest

from dispatch.config import ConfigError, DispatcherConfig
from dispatch.core import Dispatcher
from functions import mirror, services
from functions.models import Task, Worker
from scripts.waiting import wait_until
from workers import protocol, serialization
from workers.exceptions import WorkerFailureException

pytestmark = pytest.mark.django_db(transaction=True)


class FakeMode(Dispatcher):
    """Holds tasks in a list instead of running them; `slots` is its capacity."""

    mode = "fake"

    def setup(self):
        self.slots = 2
        self.sent: list[protocol.Task] = []
        self.cancelled: list[str] = []

    def capacity(self):
        return self.slots - len(self.sent)

    def send(self, tasks):
        self.sent.extend(tasks)
        return {t.task_id: "fake-worker" for t in tasks}

    def wait(self, timeout):
        return set()

    def cancel_running(self, task_id, identity):
        self.cancelled.append(task_id)

    def finish_all(self):
        """Results arrive; the next sync stores them, as one loop iteration would."""
        results = [protocol.Result(t.task_id, "COMPLETED", serialization.dumps(t.task_id), "", time.time(),
                                   time.time()) for t in self.sent]
        self.sent = []
        self.complete(results)
        self.sync(self.clock())


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def dispatcher(redis_server, redis_client):
    clock = Clock()
    config = DispatcherConfig(mode="local", redis_url=redis_server.url, timeout=5.0, retries=0,
                              deadline_grace=1.0, flush_interval=0.0)
    d = FakeMode(config, clock=clock)
    d.initialize()
    d.clock_ = clock
    yield d
    d.shutdown()


@pytest.fixture
def submit(django_user_model):
    owner = django_user_model.objects.create_user("owner")
    function = services.function_register(owner=owner, name="f", payload=serialization.dumps(len))

    def _submit(n=1, timeout=None):
        return [str(t.id) for t in services.task_submit_batch(
            owner=owner, function=function, payloads=[serialization.dumps(((), {}))] * n, timeout=timeout)]

    return _submit


def status(redis_client, task_id):
    return redis_client.hget(mirror.task_key(task_id), "status").decode()


def test_claims_only_as_many_tasks_as_there_is_capacity(dispatcher, submit, redis_client):
    ids = submit(5)
    dispatcher.loop(dispatcher.clock_.now)
    assert [t.task_id for t in dispatcher.sent] == ids[:2]
    assert [status(redis_client, t) for t in ids] == ["RUNNING"] * 2 + ["QUEUED"] * 3
    dispatcher.finish_all()
    dispatcher.loop(dispatcher.clock_.now)
    assert [t.task_id for t in dispatcher.sent] == ids[2:4]
    dispatcher.flush(dispatcher.clock_.now, force=True)
    assert Task.objects.filter(status="COMPLETED").count() == 2


def test_results_reach_redis_at_once_and_the_database_in_a_batch(dispatcher, submit, redis_client):
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    dispatcher.finish_all()
    assert {status(redis_client, t) for t in ids} == {"COMPLETED"}
    dispatcher.flush(dispatcher.clock_.now, force=True)  # waits for the database writer
    assert Task.objects.filter(status="COMPLETED").count() == 2
    assert redis_client.xlen(mirror.STREAM) == 0  # acknowledged and deleted


def test_overdue_task_fails_after_its_deadline_plus_grace(dispatcher, submit, redis_client):
    [task_id] = submit(1, timeout=2.0)
    dispatcher.loop(dispatcher.clock_.now)
    dispatcher.clock_.now += 2.9
    dispatcher.loop(dispatcher.clock_.now)
    assert status(redis_client, task_id) == "RUNNING"
    dispatcher.clock_.now += 0.2
    dispatcher.loop(dispatcher.clock_.now)
    assert status(redis_client, task_id) == "FAILED"
    exc = serialization.loads(redis_client.hget(mirror.task_key(task_id), "result"))
    assert isinstance(exc, WorkerFailureException) and str(exc) == "timed out after 2 s"


def test_late_result_for_a_failed_task_is_ignored(dispatcher, submit, redis_client):
    [task_id] = submit(1, timeout=1.0)
    dispatcher.loop(dispatcher.clock_.now)
    dispatcher.clock_.now += 5
    dispatcher.loop(dispatcher.clock_.now)
    assert status(redis_client, task_id) == "FAILED"
    dispatcher.finish_all()  # the worker answers after all
    assert status(redis_client, task_id) == "FAILED"


def test_task_cancelled_while_queued_never_reaches_a_worker(dispatcher, submit, redis_client):
    [task_id] = submit(1)
    services.task_cancel(task=Task.objects.get(id=task_id))
    dispatcher.loop(dispatcher.clock_.now)
    assert dispatcher.sent == [] and status(redis_client, task_id) == "FAILED"


def test_cancel_of_a_running_task_reaches_the_mode(dispatcher, submit, redis_client):
    [task_id] = submit(1)
    dispatcher.loop(dispatcher.clock_.now)
    services.task_cancel(task=Task.objects.get(id=task_id))
    deadline = time.monotonic() + 5
    while not dispatcher.cancelled and time.monotonic() < deadline:
        dispatcher.loop(dispatcher.clock_.now)
    assert dispatcher.cancelled == [task_id]


def test_lost_task_is_retried_while_retries_remain(redis_server, redis_client, submit):
    config = DispatcherConfig(mode="local", redis_url=redis_server.url, retries=1)
    d = FakeMode(config, clock=Clock())
    d.initialize()
    try:
        [task_id] = submit(1)
        d.loop(d.clock())
        d.sent = []
        d.lose([task_id], "worker died")
        assert status(redis_client, task_id) == "QUEUED"
        d.loop(d.clock())
        assert [t.task_id for t in d.sent] == [task_id]
        d.sent = []
        d.lose([task_id], "worker died again")
        assert status(redis_client, task_id) == "FAILED"
    finally:
        d.shutdown()


def test_entries_of_a_dead_dispatcher_are_reclaimed(redis_server, redis_client, submit):
    config = DispatcherConfig(mode="local", redis_url=redis_server.url, consumer="dead-one")
    dead = FakeMode(config, clock=Clock())
    dead.initialize()
    ids = submit(3)
    dead.slots = 1
    dead.loop(dead.clock())  # holds ids[0] as RUNNING, then "crashes" (never shuts down)
    redis_client.delete(mirror.dispatcher_key("dead-one"))
    heir = FakeMode(DispatcherConfig(mode="local", redis_url=redis_server.url, consumer="heir"), clock=Clock())
    heir.initialize()
    try:
        heir.slots = 0
        heir.reclaim_from_dead_dispatchers()
        assert status(redis_client, ids[0]) == "FAILED"  # it was running when its dispatcher died
        heir.slots = 5
        heir.loop(heir.clock())
        assert {t.task_id for t in heir.sent} == set(ids[1:])
    finally:
        heir.shutdown()
        dead.writes.close()  # its database writer thread would have died with its process


@pytest.mark.parametrize("kwargs, fragment", [
    ({"mode": "push", "bind": "0.0.0.0"}, "--insecure"),
    ({"mode": "warp"}, "Unknown mode"),
    ({"mode": "local", "workers": 0}, "at least 1"),
])
def test_config_refuses_unsafe_or_impossible_settings(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DispatcherConfig(redis_url="redis://x", **kwargs).validate()


def test_public_bind_is_allowed_with_keys_or_insecure():
    DispatcherConfig(redis_url="redis://x", mode="push", bind="0.0.0.0", keys_dir="/k").validate()
    DispatcherConfig(redis_url="redis://x", mode="push", bind="0.0.0.0", insecure=True).validate()


def test_a_locked_database_never_stalls_dispatching(dispatcher, submit, redis_client, transactional_db):
    """Another process holds SQLite's write lock (as the web servers do at every submit):
    results still reach Redis and new tasks are still claimed; the rows catch up after."""
    import sqlite3

    from django.db import connection

    ids = submit(4)
    dispatcher.loop(dispatcher.clock_.now)
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        began = time.monotonic()
        dispatcher.finish_all()
        dispatcher.loop(dispatcher.clock_.now)
        assert time.monotonic() - began < 1.0
        assert [status(redis_client, t) for t in ids] == ["COMPLETED"] * 2 + ["RUNNING"] * 2
        assert Task.objects.filter(status="COMPLETED").count() == 0  # the writer waits for the lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    dispatcher.flush(dispatcher.clock_.now, force=True)
    assert Task.objects.filter(status="COMPLETED").count() == 2


def test_tasks_redis_lost_are_queued_again_once(dispatcher, submit, redis_client):
    ids = submit(3)
    redis_client.flushall()  # Redis lost its data: the rows say QUEUED, Redis knows nothing
    mirror.ensure_group(redis_client)
    assert dispatcher.requeue_lost_tasks() == 3
    assert dispatcher.requeue_lost_tasks() == 0  # a second sweep (or another dispatcher's) finds them queued
    assert redis_client.xlen(mirror.STREAM) == 3
    dispatcher.loop(dispatcher.clock_.now)
    assert len(dispatcher.sent) == 2 and {t.task_id for t in dispatcher.sent} <= set(ids)
    assert [t.arguments for t in dispatcher.sent] == [serialization.dumps(((), {}))] * 2


def test_the_database_writer_survives_an_unexpected_error(dispatcher, submit, redis_client, monkeypatch):
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    real, calls = services.tasks_finish, []

    def fails_once(outcomes):
        calls.append(len(outcomes))
        if len(calls) == 1:
            raise RuntimeError("a bug in a write")
        return real(outcomes)

    monkeypatch.setattr(services, "tasks_finish", fails_once)
    monkeypatch.setattr("dispatch.writer.RETRY_AFTER", 0.05)
    dispatcher.finish_all()
    wait_until(lambda: Task.objects.filter(id__in=ids, status="COMPLETED").count() == 2, timeout=10)
    assert dispatcher.writes.thread.is_alive() and len(calls) >= 2


def test_a_deleted_worker_row_does_not_block_the_tasks_writes(dispatcher, submit):
    """An operator deletes a Worker row the pending writes point at: the batch is written
    again without worker links, and the dispatcher forgets its worker ids."""
    dispatcher.worker_ids["fake-worker"] = services.worker_register(identity="fake-worker", mode="fake",
                                                                    hostname="h", pid=1, processes=2)
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    Worker.objects.all().delete()
    dispatcher.finish_all()
    wait_until(lambda: dispatcher.flush(dispatcher.clock_.now, force=True) is None
               and Task.objects.filter(id__in=ids, status="COMPLETED", worker=None).count() == 2, timeout=10)
    assert dispatcher.worker_ids == {}
