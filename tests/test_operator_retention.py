"""Retention: results and payloads dropped after FAAS_RESULT_TTL, rows after the history TTL
or by `manage.py purge_tasks`; the sweep runs in one dispatcher at a time."""

from __future__ import annotations

import datetime as dt
import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dispatch.retention import RetentionSweeper
from functions import retention
from functions.client import ClientError, FaaSClient
from functions.models import Task
from functions.taskstore import keys
from functions.taskstore.memory import MemoryTaskStore
from tests import operator_functions as of
from tests.helpers import wait_until
from tests.platform import start_platform
from tests.test_operator_listing import register, submit

pytestmark = pytest.mark.django_db

OLD = timezone.now() - dt.timedelta(days=10)


def age(task_id, status="COMPLETED", when=OLD):
    Task.objects.filter(id=task_id).update(status=status, created_at=when, finished_at=when, result=b"r",
                                           output="printed")


def purge(*args) -> str:
    out = io.StringIO()
    call_command("purge_tasks", *args, stdout=out)
    return out.getvalue().strip()


def test_purge_tasks_command_dry_run_status_filter_and_redis_records(alice, redis_client):
    fid = register(alice)
    done, failed, recent, running = (submit(alice, fid) for _ in range(4))
    age(done)
    age(failed, "FAILED")
    age(running, "RUNNING")
    Task.objects.filter(id=recent).update(status="COMPLETED", finished_at=timezone.now())
    assert purge("--older-than", "7d", "--dry-run") == "would delete 2 finished task(s) older than 7d"
    assert Task.objects.count() == 4
    assert purge("--older-than", "7d", "--status", "FAILED") == "deleted 1 failed task(s) older than 7d"
    assert not Task.objects.filter(id=failed).exists() and not redis_client.exists(keys.task_key(failed))
    assert purge("--older-than", "168h") == "deleted 1 finished task(s) older than 168h"
    assert set(Task.objects.values_list("id", flat=True).iterator()) == {Task.objects.get(id=recent).id,
                                                                           Task.objects.get(id=running).id}
    assert alice.get(f"/status/{done}").status_code == 404


def test_purge_tasks_refuses_a_bad_age():
    with pytest.raises(CommandError, match="is not an age"):
        purge("--older-than", "a week")


def test_sweep_drops_bytes_after_the_result_ttl_and_rows_after_the_history_ttl(alice, redis_client):
    fid = register(alice)
    kept, expired, gone = (submit(alice, fid) for _ in range(3))
    age(kept, when=timezone.now())
    age(expired, when=timezone.now() - dt.timedelta(hours=2))
    age(gone, when=timezone.now() - dt.timedelta(days=40))
    redis_client.delete(*(keys.task_key(t) for t in (kept, expired, gone)))  # Redis expired them already
    swept = retention.sweep(result_ttl=3600, history_ttl=30 * 24 * 3600)
    assert (swept.expired, swept.deleted) == (2, 1)
    row = Task.objects.get(id=expired)
    assert row.result is None and bytes(row.payload) == b"" and row.output == ""
    assert Task.objects.get(id=kept).result is not None
    assert not Task.objects.filter(id=gone).exists()
    body = alice.get(f"/result/{expired}").json()
    assert body["status"] == "COMPLETED" and body["result"] is None and body["expired"] is True


def test_one_dispatcher_at_a_time_sweeps_once_per_interval():
    now = [1000.0]
    store = MemoryTaskStore(clock=lambda: now[0])
    runs, lock = [], threading.Lock()

    def sweeper(name):
        def sweep():
            with lock:
                runs.append((name, now[0]))
        return RetentionSweeper(store, name, interval=600, sweep=sweep, clock=lambda: now[0])

    a, b = sweeper("a"), sweeper("b")
    assert not a.maybe_run(now[0]) and not b.maybe_run(now[0])  # not in the first minute
    now[0] += 60
    assert a.maybe_run(now[0]) and not b.maybe_run(now[0])  # b finds the lock taken
    a.thread.join(5)
    now[0] += 300
    assert not a.maybe_run(now[0]) and not b.maybe_run(now[0])
    now[0] += 301
    started = [s.maybe_run(now[0]) for s in (b, a)]
    assert started == [True, False]
    b.thread.join(5)
    assert [name for name, _ in runs] == ["a", "b"]
    assert not RetentionSweeper(store, "c", interval=0, sweep=lambda: None, clock=lambda: now[0]).maybe_run(1e9)


def test_a_running_platform_drops_results_after_their_ttl(stack):
    stack.extra_env.update({"FAAS_RESULT_TTL": "1", "FAAS_RETENTION_INTERVAL": "1"})
    platform = start_platform(stack, "local", 1)
    with FaaSClient(platform.api.url) as client:
        task_id = client.submit(client.register(of.chatty), 1)
        assert client.result(task_id, timeout=30) == 1
        wait_until(lambda: Task.objects.filter(id=task_id, status="COMPLETED", result__isnull=True).exists(),
                   timeout=30, message="the result was never dropped")
        wait_until(lambda: client.poll(task_id).get("expired"), timeout=15)
        with pytest.raises(ClientError, match="has expired"):
            client.result(task_id, timeout=5)
