"""Several dispatchers on one queue, end to end: three dispatchers (push and pull mixed),
each with its own worker, thousands of tasks; one dispatcher is stopped in the middle.

Every task must reach exactly one final state (the database and Redis agree on it), and a
task runs more than once only when --retries allows it: each run appends a line to a file,
so executions are counted by their side effect, not by what the platform reports.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from functions.models import Task
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api
from tests.stack import endpoint_of
from workers.serialization import serialize

# 2,000 in `make test`; FAAS_SOAK_TASKS=5000 (or more) for the long run the issue describes.
TASKS = int(os.environ.get("FAAS_SOAK_TASKS", "2000"))
RUN_SECONDS = 0.005  # each task sleeps this long, so a stopped dispatcher holds tasks mid-run
FLEET = [("push", 2), ("pull", 2), ("push", 2)]  # (mode, worker processes) per dispatcher; [0] is stopped
BATCH = 500  # tasks per /execute_batch request
FINAL = {"COMPLETED", "FAILED"}


def start_fleet(stack, retries: int):
    api = Api(stack.web())
    dispatchers = []
    for mode, processes in FLEET:
        dispatcher = stack.dispatcher(mode, "--retries", str(retries))
        stack.worker(mode, processes, endpoint_of(dispatcher))
        dispatchers.append(dispatcher)
    return api, dispatchers


def submit(api: Api, path: Path, n: int, seconds: float = RUN_SECONDS) -> list[str]:
    """Queue `n` recorded runs with /execute_batch; task i carries token i."""
    function_id = api.register(ff.record_execution)
    task_ids: list[str] = []
    for start in range(0, n, BATCH):
        payloads = [serialize(((str(path), i, seconds), {})) for i in range(start, min(n, start + BATCH))]
        response = api.http.post(api.url + "/execute_batch", json={"function_id": function_id, "payloads": payloads})
        assert response.status_code == 201, response.text
        task_ids += response.json()["task_ids"]
    return task_ids


def runs(path: Path) -> Counter[int]:
    """How many times each token's task ran, from the side-effect file."""
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


@pytest.fixture
def store(redis_server, redis_client):
    """The task store on the test's Redis (flushed around the test by redis_client)."""
    from functions.taskstore import TaskStore

    opened = TaskStore.connect(redis_server.url)
    yield opened
    opened.close()


def statuses_in_redis(task_ids: list[str], store) -> dict[str, str | None]:
    return dict(zip(task_ids, store.statuses(task_ids)))


def statuses_in_database(task_ids: list[str]) -> dict[str, str]:
    return {str(k): v for k, v in Task.objects.filter(id__in=task_ids).values_list("id", "status")}


class DatabaseLagsRedis(AssertionError):
    """Raised when Redis holds final states (what clients may have been told) that the
    database, the authority for final states (DESIGN §3), still lacks after its flushes."""


def final_in_redis(task_ids: list[str], store) -> dict[str, str]:
    """Each task's status once Redis holds a final one for every task."""
    return wait_until(lambda: (lambda s: s if set(s.values()) <= FINAL else None)(
        statuses_in_redis(task_ids, store)), timeout=180, interval=0.5,
        message="not every task reached a final state in Redis")


def assert_database_agrees(in_redis: dict[str, str], patience: float = 30.0) -> None:
    """The database catches up with every final state Redis holds, within the writer's flushes."""
    task_ids = list(in_redis)

    def disagreeing() -> Counter:
        database = statuses_in_database(task_ids)
        return Counter((database.get(t), in_redis[t]) for t in task_ids if database.get(t) != in_redis[t])

    try:
        wait_until(lambda: not disagreeing(), timeout=patience, interval=0.5)
    except AssertionError:
        lag = disagreeing()
        raise DatabaseLagsRedis(f"{patience:g} s on, the database still disagrees with Redis on "
                                f"{sum(lag.values())} task(s), as (database, Redis): {dict(lag)}") from None


def settled(task_ids: list[str], store) -> dict[str, str]:
    """Final states in Redis, and the database in agreement."""
    in_redis = final_in_redis(task_ids, store)
    assert_database_agrees(in_redis)
    return in_redis


def stop_one_in_the_middle(stack, store, tmp_path, sig: int, retries: int):
    api, dispatchers = start_fleet(stack, retries)
    side_effects = tmp_path / "runs.txt"
    task_ids = submit(api, side_effects, TASKS)
    wait_until(lambda: sum(runs(side_effects).values()) >= TASKS // 3, timeout=120,
               message="a third of the tasks never ran")
    dispatchers[0].signal(sig)
    exit_code = dispatchers[0].popen.wait(60)
    states = final_in_redis(task_ids, store)
    return api, dispatchers, task_ids, states, runs(side_effects), exit_code


@pytest.mark.timeout(420)
@pytest.mark.parametrize("retries", [0, 1])
def test_a_dispatcher_killed_mid_run_loses_no_task_and_runs_none_twice_beyond_retries(
        stack, store, tmp_path, retries):
    api, dispatchers, task_ids, states, ran, _ = stop_one_in_the_middle(
        stack, store, tmp_path, signal.SIGKILL, retries)
    tokens = {task_id: i for i, task_id in enumerate(task_ids)}
    overrun = {i: n for i, n in ran.items() if n > 1 + retries}
    assert not overrun, f"tasks ran more often than --retries {retries} allows: {overrun}"
    never_ran_completed = [t for t, s in states.items() if s == "COMPLETED" and ran[tokens[t]] == 0]
    assert not never_ran_completed, f"COMPLETED without ever running: {never_ran_completed[:5]}"
    failed = [t for t, s in states.items() if s == "FAILED"]
    # Only what the killed dispatcher held can fail: at most its worker's processes (plus
    # the entries it had claimed for them); with a retry each of those runs again.
    assert len(failed) <= (0 if retries else 10), f"{len(failed)} task(s) failed"
    for task_id in failed:
        assert "dispatcher" in api.result(task_id)["error"], api.result(task_id)
    survivors = "".join(d.output() for d in dispatchers[1:])
    assert "reclaimed" in survivors, "no surviving dispatcher took over the killed one's entries"
    workers = set(Task.objects.filter(id__in=task_ids, status="COMPLETED").values_list("worker__identity", flat=True))
    assert len(workers) >= 3, f"tasks ran on {len(workers)} worker(s), not on every dispatcher's"
    # Before the task-store rewrite (issue 10) this failed: the killed dispatcher's unflushed
    # database batch was lost, and 51 of 3,000 rows stayed QUEUED or RUNNING for good.
    assert_database_agrees(states)


@pytest.mark.timeout(420)
def test_a_dispatcher_drained_mid_run_finishes_what_it_holds_and_the_others_take_the_rest(
        stack, store, tmp_path):
    _, dispatchers, task_ids, states, ran, exit_code = stop_one_in_the_middle(
        stack, store, tmp_path, signal.SIGTERM, retries=0)
    assert exit_code == 0, dispatchers[0].output()[-3000:]
    assert Counter(states.values()) == {"COMPLETED": TASKS}
    assert sorted(ran) == list(range(TASKS)) and set(ran.values()) == {1}, \
        f"runs per task: {Counter(ran.values())}"
    assert "reclaimed" not in "".join(d.output() for d in dispatchers[1:])  # a drain leaves nothing behind
    assert_database_agrees(states)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["push", "pull"])
def test_a_worker_host_stopped_while_tasks_run_leaves_and_loses_nothing(stack, store, tmp_path, mode):
    """Removing a worker host the way its service manager does (SIGTERM): it finishes what it
    holds and exits, the remaining host serves the rest, and every task runs exactly once."""
    api = Api(stack.web())
    dispatcher = stack.dispatcher(mode)
    leaving, staying = stack.worker(mode, 2, endpoint_of(dispatcher)), stack.worker(mode, 2, endpoint_of(dispatcher))
    side_effects = tmp_path / "runs.txt"
    task_ids = submit(api, side_effects, 600, seconds=0.02)  # ~6 s of work for the staying host alone
    wait_until(lambda: sum(runs(side_effects).values()) >= 100, timeout=60)
    leaving.signal(signal.SIGTERM)
    assert leaving.popen.wait(60) == 0, leaving.output()[-3000:]
    assert sum(runs(side_effects).values()) < 500, "the leaving host kept taking work until the queue ran dry"
    states = settled(task_ids, store)
    assert Counter(states.values()) == {"COMPLETED": 600}
    assert set(runs(side_effects).values()) == {1} and len(runs(side_effects)) == 600
    assert staying.alive()
