"""The dispatcher core driven one `loop(now)` at a time, with a fake mode and a fake clock,
against the task store's in-memory twin and the real Redis store alike (same contract)."""

from __future__ import annotations

import time

import pytest

from dispatch.config import ConfigError, DispatcherConfig
from dispatch.core import Dispatcher
from functions import services, taskrows
from functions.models import Task, Worker
from functions.taskstore import TaskStore
from functions.taskstore.memory import MemoryTaskStore
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

    def finish_all(self, **fields):
        """Results arrive; the next exchange stores them, as one loop iteration would."""
        results = [protocol.Result(t.task_id, fields.get("status", "COMPLETED"), serialization.dumps(t.task_id), "",
                                   time.time(), time.time(), fields.get("retry", False)) for t in self.sent]
        self.sent = []
        self.accept_results(results)
        self.exchange(self.clock())


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["memory", "redis"])
def make_store(request, redis_server, redis_client, monkeypatch):
    """A factory of stores that share one backend: the twin, or the test Redis."""
    if request.param == "memory":
        shared = MemoryTaskStore(clock=Clock())
        monkeypatch.setattr(services, "task_store", lambda: shared)
        return lambda: shared
    return lambda: TaskStore.connect(redis_server.url)


@pytest.fixture
def start_dispatcher(make_store):
    started = []

    def _start(consumer="fake-1", **overrides):
        clock = Clock()
        values = dict(mode="local", redis_url="redis://unused", timeout=5.0, retries=0, deadline_grace=1.0,
                      flush_interval=0.0, consumer=consumer)
        values.update(overrides)
        d = FakeMode(DispatcherConfig(**values), clock=clock, store=make_store())
        d.initialize()
        d.clock_ = clock
        started.append(d)
        return d

    yield _start
    for d in started:
        if d.writes.thread.is_alive():
            d.shutdown()


@pytest.fixture
def dispatcher(start_dispatcher):
    return start_dispatcher()


@pytest.fixture
def submit(django_user_model):
    owner = django_user_model.objects.create_user("owner")
    function = services.function_register(owner=owner, name="f", payload=serialization.dumps(len))

    def _submit(n=1, timeout=None):
        return [str(t.id) for t in services.task_submit_batch(
            owner=owner, function=function, payloads=[serialization.dumps(((), {}))] * n, timeout=timeout)]

    return _submit


def status(d, task_id):
    return d.store.statuses([task_id])[0]


def settle(d):
    """Everything the writer holds is written (and its entries acknowledged)."""
    d.flush(d.clock_.now, force=True)


def test_claims_only_as_many_tasks_as_there_is_capacity(dispatcher, submit):
    ids = submit(5)
    dispatcher.loop(dispatcher.clock_.now)
    assert [t.task_id for t in dispatcher.sent] == ids[:2]
    assert [status(dispatcher, t) for t in ids] == ["RUNNING"] * 2 + ["QUEUED"] * 3
    dispatcher.finish_all()
    dispatcher.loop(dispatcher.clock_.now)
    assert [t.task_id for t in dispatcher.sent] == ids[2:4]
    settle(dispatcher)
    assert Task.objects.filter(status="COMPLETED").count() == 2
    assert set(Task.objects.filter(status="RUNNING").values_list("dispatcher", flat=True)) == {"fake-1"}


def test_an_entry_is_acknowledged_only_once_the_database_has_the_final_state(dispatcher, submit, monkeypatch):
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    written = []
    monkeypatch.setattr(taskrows, "finish", lambda settled, real=taskrows.finish: written.append(1) or real(settled))
    dispatcher.writes.stopping = True  # the writer thread is "slow": nothing written yet
    dispatcher.writes.wake.set()
    dispatcher.writes.thread.join(5)
    dispatcher.finish_all()
    assert {status(dispatcher, t) for t in ids} == {"COMPLETED"}  # clients see it at once
    assert dispatcher.store.queue_depth().length == 2  # but the entries stay pending
    dispatcher.writes.write_once()
    assert written and Task.objects.filter(status="COMPLETED").count() == 2
    assert dispatcher.store.queue_depth().length == 0  # acknowledged and deleted


def test_overdue_task_fails_after_its_deadline_plus_grace(dispatcher, submit):
    [task_id] = submit(1, timeout=2.0)
    dispatcher.loop(dispatcher.clock_.now)
    dispatcher.clock_.now += 2.9
    dispatcher.loop(dispatcher.clock_.now)
    assert status(dispatcher, task_id) == "RUNNING"
    dispatcher.clock_.now += 0.2
    dispatcher.loop(dispatcher.clock_.now)
    assert status(dispatcher, task_id) == "FAILED"
    exc = serialization.loads(dispatcher.store.read(task_id)["result"])
    assert isinstance(exc, WorkerFailureException) and str(exc) == "timed out after 2 s"


def test_late_result_for_a_failed_task_is_ignored(dispatcher, submit):
    [task_id] = submit(1, timeout=1.0)
    dispatcher.loop(dispatcher.clock_.now)
    dispatcher.clock_.now += 5
    dispatcher.loop(dispatcher.clock_.now)
    assert status(dispatcher, task_id) == "FAILED"
    dispatcher.finish_all()  # the worker answers after all
    assert status(dispatcher, task_id) == "FAILED"
    settle(dispatcher)
    assert Task.objects.get(id=task_id).status == "FAILED"


def test_task_cancelled_while_queued_never_reaches_a_worker(dispatcher, submit):
    [task_id] = submit(1)
    services.task_cancel(task=Task.objects.get(id=task_id))
    dispatcher.loop(dispatcher.clock_.now)
    assert dispatcher.sent == [] and status(dispatcher, task_id) == "FAILED"
    assert dispatcher.store.queue_depth().length == 0


def test_cancel_of_a_running_task_reaches_the_mode(dispatcher, submit):
    [task_id] = submit(1)
    dispatcher.loop(dispatcher.clock_.now)
    services.task_cancel(task=Task.objects.get(id=task_id))
    wait_until(lambda: dispatcher.loop(dispatcher.clock_.now) or dispatcher.cancelled, timeout=5)
    assert dispatcher.cancelled == [task_id]


def test_lost_task_is_retried_while_retries_remain(start_dispatcher, submit):
    d = start_dispatcher(retries=1)
    [task_id] = submit(1)
    d.loop(d.clock())
    d.sent = []
    d.lose([task_id], "worker died")
    assert status(d, task_id) == "QUEUED"
    d.loop(d.clock())
    assert [t.task_id for t in d.sent] == [task_id]
    d.sent = []
    d.lose([task_id], "worker died again")
    assert status(d, task_id) == "FAILED"
    assert "worker died again (attempt 2 of 2)" in d.store.read(task_id)["error"].decode()


def test_a_cancelled_task_is_never_requeued(start_dispatcher, submit):
    """Issue case 1: cancelled while RUNNING, then its worker is lost with retries left."""
    d = start_dispatcher(retries=1)
    [task_id] = submit(1)
    d.loop(d.clock())
    services.task_cancel(task=Task.objects.get(id=task_id))
    d.sent = []
    d.lose([task_id], "worker died")
    d.loop(d.clock())
    assert d.sent == [] and status(d, task_id) == "FAILED"
    assert "cancelled" in d.store.read(task_id)["error"].decode()
    settle(d)
    assert Task.objects.get(id=task_id).error.endswith("cancelled")


def test_a_crashed_process_counts_against_retries(start_dispatcher, submit):
    d = start_dispatcher(retries=1)
    [task_id] = submit(1)
    d.loop(d.clock())
    d.finish_all(status="FAILED", retry=True)  # its process died: re-queued, and claimed again at once
    assert [t.task_id for t in d.sent] == [task_id] and status(d, task_id) == "RUNNING"
    d.finish_all(status="FAILED", retry=True)  # and again: no retries left
    assert status(d, task_id) == "FAILED"


def test_entries_of_a_dead_dispatcher_are_reclaimed(start_dispatcher, submit):
    dead = start_dispatcher(consumer="dead-one")
    ids = submit(3)
    dead.slots = 1
    dead.loop(dead.clock())  # holds ids[0] as RUNNING, then "crashes" (never shuts down)
    dead.writes.flush()
    dead.writes.close()  # its database writer thread would have died with its process
    dead.leave = lambda: None
    heir = start_dispatcher(consumer="heir")
    heir.store.leave("dead-one") if isinstance(heir.store, MemoryTaskStore) else heir.store.redis.delete(
        "faas:dispatcher:dead-one")
    heir.slots = 0
    heir.recovery.periodic(heir.clock())
    assert status(heir, ids[0]) == "FAILED"  # it was running when its dispatcher died
    heir.slots = 5
    heir.loop(heir.clock())
    assert {t.task_id for t in heir.sent} == set(ids[1:])


def test_a_final_state_the_database_missed_is_copied_from_the_store(start_dispatcher, submit, monkeypatch):
    """Issue case 3: the dispatcher dies after the store has a final state and before its
    database write; whoever reclaims the entry writes it."""
    dead = start_dispatcher(consumer="dead-one")
    [task_id] = submit(1)
    dead.loop(dead.clock())
    dead.writes.stopping = True  # the writer never gets to it: killed
    dead.writes.wake.set()
    dead.writes.thread.join(5)
    dead.finish_all()
    assert status(dead, task_id) == "COMPLETED"
    assert Task.objects.get(id=task_id).status == "RUNNING"
    heir = start_dispatcher(consumer="heir")
    heir.store.leave("dead-one") if isinstance(heir.store, MemoryTaskStore) else heir.store.redis.delete(
        "faas:dispatcher:dead-one")
    heir.recovery.periodic(heir.clock())
    settle(heir)
    row = Task.objects.get(id=task_id)
    assert row.status == "COMPLETED" and serialization.loads(bytes(row.result)) == task_id
    assert heir.store.queue_depth().length == 0


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


def test_a_locked_database_never_stalls_dispatching(dispatcher, submit, transactional_db):
    """Another process holds SQLite's write lock (as the web servers do at every submit):
    results still reach the store and new tasks are still claimed; the rows catch up after."""
    import sqlite3

    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the lock in question is SQLite's single writer lock")
    ids = submit(4)
    dispatcher.loop(dispatcher.clock_.now)
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        began = time.monotonic()
        dispatcher.finish_all()
        dispatcher.loop(dispatcher.clock_.now)
        assert time.monotonic() - began < 1.0
        assert [status(dispatcher, t) for t in ids] == ["COMPLETED"] * 2 + ["RUNNING"] * 2
        assert Task.objects.filter(status="COMPLETED").count() == 0  # the writer waits for the lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    settle(dispatcher)
    assert Task.objects.filter(status="COMPLETED").count() == 2


def test_tasks_the_store_lost_are_queued_again_once(dispatcher, submit):
    ids = submit(3)
    store = dispatcher.store
    if isinstance(store, MemoryTaskStore):
        store.tasks.clear()
        store.stream.clear()
    else:
        store.redis.flushall()  # Redis lost its data: the rows say QUEUED, Redis knows nothing
        store.ensure_group()
    assert dispatcher.recovery.requeue_lost_tasks() == 3
    assert dispatcher.recovery.requeue_lost_tasks() == 0  # a second sweep (or another's) finds them queued
    assert store.queue_depth().length == 3
    dispatcher.loop(dispatcher.clock_.now)
    assert len(dispatcher.sent) == 2 and {t.task_id for t in dispatcher.sent} <= set(ids)
    assert [t.arguments for t in dispatcher.sent] == [serialization.dumps(((), {}))] * 2


def test_the_database_writer_survives_an_unexpected_error(dispatcher, submit, monkeypatch):
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    real, calls = taskrows.finish, []

    def fails_once(settled):
        calls.append(len(settled))
        if len(calls) == 1:
            raise RuntimeError("a bug in a write")
        return real(settled)

    monkeypatch.setattr(taskrows, "finish", fails_once)
    monkeypatch.setattr("dispatch.writer.RETRY_AFTER", 0.05)
    dispatcher.finish_all()
    wait_until(lambda: Task.objects.filter(id__in=ids, status="COMPLETED").count() == 2, timeout=10)
    assert dispatcher.writes.thread.is_alive() and len(calls) >= 2


def test_a_deleted_worker_row_does_not_block_the_tasks_writes(dispatcher, submit):
    """An operator deletes a Worker row the pending writes point at: the batch is written
    again without worker links."""
    dispatcher.worker_seen("fake-worker", protocol.WorkerInfo(2, "h", 1))
    ids = submit(2)
    dispatcher.loop(dispatcher.clock_.now)
    settle(dispatcher)
    Worker.objects.all().delete()
    dispatcher.finish_all()
    wait_until(lambda: dispatcher.flush(dispatcher.clock_.now, force=True) is None
               and Task.objects.filter(id__in=ids, status="COMPLETED", worker=None).count() == 2, timeout=10)


def test_a_worker_lost_then_seen_again_is_shown_alive(dispatcher):
    """Issue case 6: the writer applies worker changes in the order they happened."""
    info = protocol.WorkerInfo(2, "h", 1)
    dispatcher.worker_seen("w", info)
    settle(dispatcher)
    dispatcher.worker_state("w", alive=False, busy=0)  # lost (missed heartbeats)...
    dispatcher.flush(dispatcher.clock_.now + 5)  # handed to the writer, not yet written
    dispatcher.worker_seen("w", info)  # ...and back at once
    settle(dispatcher)
    assert Worker.objects.get(identity="w").alive is True
