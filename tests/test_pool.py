"""workers.pool.ProcessPool: results, deaths, deadlines, cancel and cleanup with real children."""

from __future__ import annotations

import itertools
import multiprocessing.connection
import os
import signal
import time
import uuid

import pytest

from tests import fixtures_functions as ff
from tests.helpers import wait_until
from workers.exceptions import FunctionFailedException, WorkerFailureException
from workers.pool import ProcessPool
from workers.protocol import Result, Task
from workers.serialization import dumps, loads

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    with ProcessPool(2) as p:
        yield p


def make_task(func, *args, deadline_s: float | None = None, function=None, **kwargs) -> Task:
    payload = dumps(func) if function is None else function
    return Task(str(uuid.uuid4()), f"f-{getattr(func, '__name__', 'raw')}", payload, dumps((args, kwargs)), deadline_s)


def wait_for(pool: ProcessPool, task_ids: set[str], timeout: float = 15.0) -> dict[str, Result]:
    """Poll the pool until every id in `task_ids` has a result."""
    got: dict[str, Result] = {}
    end = time.monotonic() + timeout
    while not task_ids <= got.keys():
        assert time.monotonic() < end, f"no result for {task_ids - got.keys()} within {timeout:g} s"
        got.update((r.task_id, r) for r in pool.poll(0.2))
    return got


def run(pool: ProcessPool, task: Task, timeout: float = 15.0) -> Result:
    pool.submit(task)
    return wait_for(pool, {task.task_id}, timeout)[task.task_id]


def failure(result: Result) -> BaseException:
    assert result.status == "FAILED", result
    return loads(result.result)


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an unreaped orphan counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


def test_start_makes_every_process_free(pool):
    assert (pool.size, pool.free, pool.busy, pool.holding()) == (2, 2, 0, [])
    assert len(set(pool.pids())) == 2 and os.getpid() not in pool.pids()
    assert all(os.getpgid(pid) == pid for pid in pool.pids())  # each child leads its own group


def test_success(pool):
    before = time.time()
    result = run(pool, make_task(ff.add, 2, 3))
    assert result.status == "COMPLETED" and loads(result.result) == 5 and result.error == ""
    assert before <= result.started_at <= result.finished_at <= time.time()
    assert pool.free == 2


def test_function_raises_value_error(pool):
    result = run(pool, make_task(ff.raise_value_error, "nope"))
    exc = failure(result)
    assert type(exc) is ValueError and str(exc) == "nope"
    assert "raise_value_error" in exc.remote_traceback
    assert result.error.startswith("ValueError: nope")


def test_exit_code_fails_the_task_and_the_pool_recovers(pool):
    pids = set(pool.pids())
    result = run(pool, make_task(ff.exit_process, 3))
    exc = failure(result)
    assert type(exc) is WorkerFailureException and str(exc) == "process exited with code 3"
    assert result.error == "WorkerFailureException: process exited with code 3"
    assert run(pool, make_task(ff.add, 1, 1)).status == "COMPLETED"
    wait_until(lambda: pool.collect() == [] and pool.free == 2, message="pool did not refill")
    assert len(pids & set(pool.pids())) == 1  # exactly one child was replaced


def test_sigkill_from_inside_names_the_signal(pool):
    exc = failure(run(pool, make_task(ff.kill_self_with_sigkill)))
    assert type(exc) is WorkerFailureException
    assert str(exc) == "process killed by signal SIGKILL (-9)"


def test_sigkill_from_outside_costs_only_that_task(pool):
    victim, other = make_task(ff.sleep_then, 30), make_task(ff.sleep_then, 0.5, "ok")
    pool.submit(victim)
    pool.submit(other)
    os.kill(pool.pid_of(victim.task_id), signal.SIGKILL)
    results = wait_for(pool, {victim.task_id, other.task_id})
    assert str(failure(results[victim.task_id])) == "process killed by signal SIGKILL (-9)"
    assert results[other.task_id].status == "COMPLETED" and loads(results[other.task_id].result) == "ok"


def test_idle_child_death_is_replaced_silently(pool):
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pool.poll(0.05) == [] and victim not in pool.pids() and pool.free == 2,
               message="dead idle child was not replaced")
    assert run(pool, make_task(ff.noop)).status == "COMPLETED"


def test_deadline_overrun_kills_and_reports(pool):
    start = time.monotonic()
    result = run(pool, make_task(ff.sleep_then, 30, deadline_s=0.5))
    elapsed = time.monotonic() - start
    exc = failure(result)
    assert type(exc) is WorkerFailureException and str(exc) == "timed out after 0.5 s"
    assert 0.5 <= elapsed < 0.5 + 2.0
    assert run(pool, make_task(ff.add, 2, 2)).status == "COMPLETED"


def test_task_within_its_deadline_completes(pool):
    assert run(pool, make_task(ff.sleep_then, 0.1, "done", deadline_s=5)).status == "COMPLETED"


def test_deadline_kill_takes_the_grandchild(pool, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    task = make_task(ff.spawn_grandchild_then_sleep, str(pid_file), deadline_s=2.0)
    pool.submit(task)
    grandchild = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), message="no grandchild pid"))
    assert is_alive(grandchild)
    result = wait_for(pool, {task.task_id})[task.task_id]
    assert str(failure(result)) == "timed out after 2 s"
    wait_until(lambda: not is_alive(grandchild), timeout=5, message=f"grandchild {grandchild} survived")


def test_next_deadline_tracks_the_task(pool):
    assert pool.next_deadline() is None
    before = time.monotonic()
    pool.submit(make_task(ff.sleep_then, 30, deadline_s=10))
    assert before + 10 <= pool.next_deadline() <= time.monotonic() + 10


def test_cancel(pool):
    task = make_task(ff.sleep_then, 30)
    pool.submit(task)
    assert pool.holding() == [task.task_id] and pool.busy == 1
    assert pool.cancel(task.task_id) is True
    assert pool.cancel(task.task_id) is False  # already being killed
    exc = failure(wait_for(pool, {task.task_id})[task.task_id])
    assert type(exc) is WorkerFailureException and str(exc) == "cancelled"
    assert pool.cancel("no-such-task") is False
    assert pool.holding() == []
    assert run(pool, make_task(ff.noop)).status == "COMPLETED"


def test_children_ignore_sigint(pool):
    task = make_task(ff.sleep_then, 0.5, "still here")
    pool.submit(task)
    os.kill(pool.pid_of(task.task_id), signal.SIGINT)
    result = wait_for(pool, {task.task_id})[task.task_id]
    assert result.status == "COMPLETED" and loads(result.result) == "still here"


def test_forged_message_from_user_code_kills_the_child(pool):
    result = run(pool, make_task(ff.forge_pool_message))
    exc = failure(result)
    assert type(exc) is WorkerFailureException and str(exc) == "process sent a malformed message"
    assert run(pool, make_task(ff.noop)).status == "COMPLETED"


def test_children_that_cannot_boot_are_retried_then_start_gives_up(monkeypatch):
    monkeypatch.setattr("workers.pool._child_main", ff.exit_process)  # exit_process(conn): TypeError, exit 1
    pool = ProcessPool(1)
    with pytest.raises(RuntimeError, match="no pool process became ready"):
        pool.start(timeout=1.0)
    assert pool.pids() == []


def test_submit_without_a_free_process_raises(pool):
    pool.submit(make_task(ff.sleep_then, 30))
    pool.submit(make_task(ff.sleep_then, 30))
    assert pool.free == 0
    with pytest.raises(RuntimeError, match="no free process"):
        pool.submit(make_task(ff.noop))


def test_duplicate_task_id_is_refused(pool):
    task = make_task(ff.sleep_then, 30)
    pool.submit(task)
    with pytest.raises(ValueError):
        pool.submit(task)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    return max(itertools.accumulate(delta for _, delta in events))


def test_concurrency_equals_pool_size(pool, tmp_path):
    log_file = tmp_path / "intervals"
    tasks = [make_task(ff.record_interval, str(log_file), 0.5) for _ in range(4)]
    waiting, done = list(tasks), {}
    end = time.monotonic() + 15
    while len(done) < len(tasks):
        assert time.monotonic() < end
        while waiting and pool.free:
            pool.submit(waiting.pop(0))
        done.update((r.task_id, r) for r in pool.poll(0.2))
    assert all(r.status == "COMPLETED" for r in done.values())
    rows = [line.split() for line in log_file.read_text().splitlines()]
    assert max_overlap([(float(s), float(e)) for s, e, _ in rows]) == 2
    assert {int(pid) for _, _, pid in rows} == set(pool.pids())


def test_unpicklable_result(pool):
    exc = failure(run(pool, make_task(ff.return_unpicklable)))
    assert type(exc) is FunctionFailedException and str(exc).startswith("result could not be serialized")


def test_oversized_result_names_the_size():
    with ProcessPool(1, max_result_bytes=1000) as small:
        exc = failure(run(small, make_task(ff.return_big, 5000)))
        assert type(exc) is FunctionFailedException
        assert str(exc) == f"result is {len(dumps(b'x' * 5000))} bytes, over the limit of 1000 bytes"


def test_non_callable_payload(pool):
    exc = failure(run(pool, make_task(None, function=dumps(42))))
    assert type(exc) is FunctionFailedException and "not callable" in str(exc)


def test_undecodable_function_bytes(pool):
    exc = failure(run(pool, make_task(None, function=b"\x00not a pickle")))
    assert type(exc) is FunctionFailedException and "could not be deserialized" in str(exc)


def test_fds_wake_a_select_loop(pool):
    task = make_task(ff.sleep_then, 0.2, "woke")
    pool.submit(task)
    results: list[Result] = []
    end = time.monotonic() + 10
    while not results:
        assert time.monotonic() < end
        multiprocessing.connection.wait(pool.fds(), timeout=1.0)
        results = pool.collect()
    assert [r.task_id for r in results] == [task.task_id] and loads(results[0].result) == "woke"


def test_many_small_tasks(pool):
    tasks = [make_task(ff.add, i, i) for i in range(200)]
    waiting, done = list(tasks), {}
    while len(done) < len(tasks):
        while waiting and pool.free:
            pool.submit(waiting.pop())
        done.update((r.task_id, loads(r.result)) for r in pool.poll(1.0))
    assert sorted(done.values()) == [2 * i for i in range(200)]


def test_close_leaves_no_process_alive(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    pool = ProcessPool(2)
    pool.start()
    pids = pool.pids()
    pool.submit(make_task(ff.spawn_grandchild_then_sleep, str(pid_file)))
    pool.submit(make_task(ff.sleep_then, 30))
    grandchild = int(wait_until(lambda: pid_file.exists() and pid_file.read_text()))
    pool.close()
    assert not any(is_alive(pid) for pid in pids)
    wait_until(lambda: not is_alive(grandchild), timeout=5, message="grandchild survived close()")
    assert pool.collect() == [] and pool.fds() == []
    with pytest.raises(RuntimeError):
        pool.submit(make_task(ff.noop))


def _descendants(pid: int) -> set[int]:
    from tests.test_hardening_lifetimes import descendants

    return descendants(pid)


def test_close_also_ends_each_childs_guardian(tmp_path):
    pool = ProcessPool(2)
    pool.start()
    helpers = set().union(*(_descendants(pid) for pid in pool.pids()))
    assert len(helpers) == 2  # one guardian per child, waiting for this process to die
    pool.close()
    wait_until(lambda: not any(is_alive(pid) for pid in helpers), timeout=10, message="a guardian outlived close()")


def test_a_child_whose_parent_died_before_prctl_kills_itself():
    """The parent-death signal only counts from prctl on: a child that finds itself already
    orphaned (getppid is not the parent it was started by) must not serve on."""
    import subprocess
    import sys

    from tests.stack import REPO

    code = "from workers.pool import _die_with_parent; _die_with_parent(1); print('survived')"
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                           start_new_session=True)  # its own group: the only one it may kill
    assert child.returncode == -signal.SIGKILL and "survived" not in child.stdout
