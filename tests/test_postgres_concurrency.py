"""Concurrency that SQLite's single writer hides: web processes inserting task rows (group
commit) while the dispatcher's writer thread updates rows in batches, all at once.

`make test` runs this file on SQLite and on PostgreSQL (`--postgres`): on PostgreSQL the
inserts and updates really overlap, in separate transactions, under row locks.
"""

from __future__ import annotations

import threading

import pytest

from functions.models import Task
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api

CLIENTS = 12
PER_CLIENT = 40
GUNICORN_THREADS = 2 * 8  # Stack.web(): 2 workers x 8 threads, each keeping its own connection


def submit_from_many_clients(url: str, function_id: str) -> list[str]:
    task_ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        api = Api(url)  # a keep-alive connection per client, like real callers
        for i in range(PER_CLIENT):
            try:
                task_id = api.submit(function_id, n, i)
            except AssertionError as exc:
                with lock:
                    errors.append(str(exc))
                return
            with lock:
                task_ids.append(task_id)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    return task_ids


@pytest.mark.timeout(240)
def test_row_inserts_and_the_writers_batches_interleave_without_losing_a_state(stack):
    api = Api(stack.web())
    dispatcher = stack.dispatcher("local", "-w", "2")
    function_id = api.register(ff.add)
    task_ids = submit_from_many_clients(api.url, function_id)  # runs while earlier tasks finish
    assert len(task_ids) == CLIENTS * PER_CLIENT
    assert all(api.result(t)["status"] == "COMPLETED" for t in task_ids)

    def all_rows_final() -> bool:
        return Task.objects.filter(id__in=task_ids, status="COMPLETED").count() == len(task_ids)

    wait_until(all_rows_final, timeout=30, interval=0.2,
               message="the database lags the completions clients were told about")
    log = dispatcher.output()
    for trouble in ("database unavailable", "rejected the batch", "deadlock", "could not record"):
        assert trouble not in log, log[-3000:]


def connections_to_the_test_database() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


@pytest.mark.only_on("postgres", why="counts server connections in pg_stat_activity, which SQLite has not")
def test_connections_stay_within_one_per_server_thread(stack):
    before = connections_to_the_test_database()  # this process's own, and earlier tests' threads
    api = Api(stack.web())
    stack.dispatcher("local", "-w", "2")
    task_ids = submit_from_many_clients(api.url, api.register(ff.add))
    assert all(api.result(t)["status"] == "COMPLETED" for t in task_ids)
    opened = connections_to_the_test_database() - before
    # Each gunicorn thread keeps one connection (CONN_MAX_AGE); the dispatcher has its loop's
    # and its writer thread's. Size max_connections from this.
    assert opened <= GUNICORN_THREADS + 2, opened


@pytest.mark.only_on("postgres", why="holds PostgreSQL row locks (SELECT ... FOR UPDATE); SQLite locks the whole "
                                     "database instead, which test_dispatcher_loop covers")
@pytest.mark.timeout(120)
def test_rows_locked_by_another_transaction_never_stall_dispatching(stack):
    """An operator's transaction holds the task rows: the writer's batch waits for the row
    locks in its own thread, while tasks still run and clients get their results."""
    import psycopg

    from tests.conftest import database_url

    api = Api(stack.web())
    function_id = api.register(ff.add)
    task_ids = [api.submit(function_id, i, 1) for i in range(6)]  # queued: no dispatcher yet
    with psycopg.connect(database_url(_database())) as holder:
        holder.execute("SELECT id FROM functions_task WHERE id = ANY(%s) FOR UPDATE", [task_ids])
        stack.dispatcher("local", "-w", "2")
        assert [api.value(t) for t in task_ids] == list(range(1, 7))  # served from Redis meanwhile
        assert Task.objects.filter(id__in=task_ids, status="COMPLETED").count() == 0  # the writer waits
        holder.rollback()
    wait_until(lambda: Task.objects.filter(id__in=task_ids, status="COMPLETED").count() == 6, timeout=30,
               message="the rows never caught up once the locks were released")


def _database() -> dict:
    from django.conf import settings

    return settings.DATABASES["default"]
