"""Redis as production runs it. REDIS_URL takes what redis-py takes: here a TLS-only Redis
(`rediss://` with the CA in the query string), used by every part of the platform at once
(the web server's enqueue and long-poll, the Django cache, the dispatcher's stream and its
dashboard channel layer). And a Redis that comes back older than the database, as after a
failover to a lagging replica."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from functions.models import Task
from scripts.redis_server import RedisServer, make_tls_files
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api
from tests.stack import endpoint_of
from workers.serialization import deserialize


@pytest.fixture
def tls_redis(tmp_path):
    server = RedisServer(tls_dir=make_tls_files(tmp_path / "tls"))
    try:
        yield server.start()
    finally:
        server.cleanup()


def test_the_whole_platform_runs_on_a_tls_only_redis(tls_redis, stack_on):
    assert tls_redis.url.startswith("rediss://")
    stack = stack_on(tls_redis.url)
    api = Api(stack.web())
    dispatcher = stack.dispatcher("push")
    stack.worker("push", 1, endpoint_of(dispatcher))
    function_id = api.register(ff.add)
    assert api.value(api.submit(function_id, 20, 22)) == 42  # long-poll: pub/sub over TLS too
    assert [api.value(t) for t in [api.submit(function_id, i, 1) for i in range(5)]] == [1, 2, 3, 4, 5]
    assert "Traceback" not in dispatcher.output(), dispatcher.output()[-3000:]


def value_once_redis_answers(api: Api, task_id: str):
    """A task's value, asking again while the web answers 503: a server thread whose kept
    Redis connection died with the old server fails its next request once (see the report)."""
    def final_answer():
        response = api.http.get(f"{api.url}/result/{task_id}", params={"wait": 5})
        if response.status_code == 503:
            return None
        body = response.json()
        return body if body.get("status") in ("COMPLETED", "FAILED") else None

    body = wait_until(final_answer, timeout=30, interval=0.1, message=f"task {task_id} never answered again")
    assert body["status"] == "COMPLETED", body
    return deserialize(body["result"])


@pytest.fixture
def snapshot_redis():
    """A Redis that keeps its data only in snapshots the test takes (SAVE), so it can be
    started again from an older one, as a replica that lagged would be promoted."""
    server = RedisServer(appendonly=False)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.mark.timeout(180)
def test_a_redis_rolled_back_to_an_older_snapshot_runs_no_finished_task_again(snapshot_redis, stack_on, tmp_path):
    """Redis comes back with data older than what clients were told (a failover to a
    lagging replica): tasks the database holds as finished keep their results and do not
    run again; the platform goes on serving new tasks."""
    import redis

    stack = stack_on(snapshot_redis.url)
    api = Api(stack.web())
    function_id = api.register(ff.record_execution)
    runs = tmp_path / "runs.txt"
    queued = [api.submit(function_id, str(runs), i) for i in range(8)]  # no dispatcher yet: all QUEUED
    client = redis.Redis.from_url(snapshot_redis.url)
    client.save()  # the "replica": it has the tasks queued, not finished
    client.close()
    older = Path(snapshot_redis.dir) / "dump.rdb"
    shutil.copy(older, tmp_path / "older.rdb")

    dispatcher = stack.dispatcher("local", "-w", "2")
    assert [api.value(t) for t in queued] == list(range(8))  # clients were told
    wait_until(lambda: Task.objects.filter(id__in=queued, status="COMPLETED").count() == 8, timeout=30)

    snapshot_redis.stop()
    shutil.copy(tmp_path / "older.rdb", older)
    snapshot_redis.start()  # same port, older data: the tasks are QUEUED there again
    # It notices either way: its connection broke ("Redis is back"), or the server's run id changed.
    wait_until(lambda: "Redis is back" in dispatcher.output() or "reconciling" in dispatcher.output(), timeout=30,
               message="the dispatcher never reconciled the rolled-back Redis with the database")
    assert [value_once_redis_answers(api, t) for t in queued] == list(range(8))
    later = [api.submit(function_id, str(runs), 100 + i) for i in range(4)]
    assert [api.value(t) for t in later] == [100 + i for i in range(4)]
    ran = Counter(int(line.split()[0]) for line in runs.read_text().splitlines())
    assert ran == Counter({**{i: 1 for i in range(8)}, **{100 + i: 1 for i in range(4)}}), ran
