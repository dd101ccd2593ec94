"""The pool child's side of output capture, soft time limits and recycling, with real children."""

from __future__ import annotations

import time
import uuid

import pytest

from tests import operator_functions as of
from tests.helpers import wait_until
from tests.test_pool import failure, make_task, run, wait_for
from workers.capture import OUTPUT_CAP
from workers.exceptions import SoftTimeLimitExceeded
from workers.pool import ProcessPool
from workers.protocol import Task
from workers.recycling import ChildLimits
from workers.serialization import dumps, loads

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pool():
    with ProcessPool(1) as p:
        yield p


def test_output_of_stdout_stderr_bytes_and_logging_comes_back_with_the_result(pool):
    result = run(pool, make_task(of.chatty, 3))
    assert result.status == "COMPLETED" and loads(result.result) == 3
    assert result.output.splitlines() == ["hello from stdout", "a warning on stderr", "INFO user.code: step 1 of 3",
                                          "raw bytes"]


def test_output_is_per_task_and_kept_for_failures(pool):
    failed = run(pool, make_task(of.print_then_raise))
    assert failed.status == "FAILED" and failed.output == "about to fail\n"
    assert run(pool, make_task(of.silent)).output == ""


def test_megabytes_of_output_keep_only_the_tail_with_a_note(pool):
    began = time.monotonic()
    result = run(pool, make_task(of.print_megabytes, 20), timeout=60)
    took = time.monotonic() - began
    assert result.status == "COMPLETED"
    assert result.output.startswith("[output cut: ")
    body = result.output.split("\n", 1)[1]
    assert len(body.encode()) <= OUTPUT_CAP and body.endswith("xx\nthe very last line\n")
    assert took < 20, f"printing 20 MB took {took:.1f} s"


def soft_task(func, seconds: float, soft: float, deadline: float | None = None) -> Task:
    return Task(str(uuid.uuid4()), "f", dumps(func), dumps(((seconds,), {})), deadline, soft)


def test_soft_limit_raises_a_catchable_exception_before_the_deadline(pool):
    began = time.monotonic()
    result = run(pool, soft_task(of.clean_up_on_soft_limit, 30, soft=0.3, deadline=10))
    assert result.status == "COMPLETED" and loads(result.result) == "cleaned up"
    assert time.monotonic() - began < 5


def test_uncaught_soft_limit_fails_the_task_with_soft_time_limit_exceeded(pool):
    exc = failure(run(pool, soft_task(time.sleep, 30, soft=0.3, deadline=10)))
    assert isinstance(exc, SoftTimeLimitExceeded) and "0.3 s" in str(exc)
    assert run(pool, make_task(of.silent)).status == "COMPLETED"  # the child serves on, no stray alarm


def test_a_function_that_swallows_the_soft_limit_is_killed_at_the_deadline(pool):
    exc = failure(run(pool, soft_task(of.ignore_soft_limit, 30, soft=0.2, deadline=1.0)))
    assert "timed out after 1 s" in str(exc)


def run_when_free(pool: ProcessPool, task: Task):
    """`run`, once a replacement child is ready (recycling leaves the pool short a moment)."""
    wait_until(lambda: pool.poll(0.1) == [] and pool.free > 0, timeout=30, message="no replacement child")
    return run(pool, task, timeout=30)


def test_children_recycled_after_n_tasks_between_tasks_only():
    with ProcessPool(1, limits=ChildLimits(max_tasks=2)) as pool:
        pids = []
        for _ in range(5):
            result = run_when_free(pool, make_task(of.pid))
            assert result.status == "COMPLETED"
            pids.append(loads(result.result))
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_children_recycled_when_their_memory_passes_the_limit():
    with ProcessPool(1, limits=ChildLimits(max_memory_kib=200 * 1024)) as pool:
        first = loads(run_when_free(pool, make_task(of.grow, 10)).result)
        assert loads(run_when_free(pool, make_task(of.grow, 10)).result) == first  # under 200 MiB: kept
        big = loads(run_when_free(pool, make_task(of.grow, 300)).result)
        assert big == first  # the task that grew it finished in the same child
        assert loads(run_when_free(pool, make_task(of.pid)).result) != first


def test_progress_reports_reach_the_parent_while_the_task_runs(pool, tmp_path):
    go = tmp_path / "go"
    task = make_task(of.staged, str(go))
    pool.submit(task)
    reports = {}

    def reported():
        pool.poll(0.1)
        reports.update(pool.take_progress())
        return task.task_id in reports

    wait_until(reported, timeout=15)
    assert reports[task.task_id] == (0.4, "stage 2 of 5")
    go.touch()
    assert wait_for(pool, {task.task_id})[task.task_id].status == "COMPLETED"
    assert pool.take_progress() == {}


def test_a_million_progress_reports_cost_little_and_send_a_few(pool):
    result = run(pool, make_task(of.report_many, 1_000_000), timeout=60)
    took = loads(result.result)
    assert took < 5.0, f"a million reports took {took:.1f} s"
    # at most one report per 0.2 s left the child; the result superseded the last
    assert pool.take_progress() == {}


def test_the_worker_marks_failures_its_retry_policy_names_as_retryable(pool, tmp_path):
    def flaky_task(kind: str, names: tuple[str, ...]) -> Task:
        return Task(str(uuid.uuid4()), "f", dumps(of.flaky), dumps(((str(tmp_path / kind), 5, kind), {})), None, None,
                    names)

    assert run(pool, flaky_task("ConnectionError", ("ConnectionError",))).retry is True
    assert run(pool, flaky_task("ValueError", ("ConnectionError",))).retry is False
    assert run(pool, flaky_task("ConnectionError", ())).retry is False
