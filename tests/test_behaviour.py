"""One behaviour suite over the three dispatcher modes, against one running platform per
mode: web server, dispatcher, workers and Redis as real processes."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db.models import Sum

from functions.models import Task, Worker
from scripts.stack import Stack
from tests import fixtures_functions as ff
from tests.conftest import database_url
from tests.helpers import wait_until
from tests.platform import MODES, start_platform
from workers.exceptions import FunctionFailedException, WorkerFailureException


@pytest.fixture(scope="module", params=MODES)
def platform(request, redis_server, django_db_setup, django_db_blocker, tmp_path_factory):
    """A platform per mode, shared by the tests that leave it as they found it."""
    with django_db_blocker.unblock():
        stack = Stack(redis_server.url, database_url(settings.DATABASES["default"]),
                      tmp_path_factory.mktemp(f"platform-{request.param}"))
        try:
            yield start_platform(stack, request.param)
        finally:
            stack.close()
            call_command("flush", "--no-input", verbosity=0)  # leave no rows for other modules


def test_tasks_move_from_queued_through_running_to_completed(platform):
    task_id = platform.api.submit(platform.api.register(ff.sleep_then), 1.0, "done")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=15)
    assert platform.api.value(task_id) == "done"
    assert platform.api.status(task_id) == "COMPLETED"


def test_concurrency_equals_worker_processes(platform, tmp_path):
    path = str(tmp_path / "intervals")
    function_id = platform.api.register(ff.record_interval)
    task_ids = [platform.api.submit(function_id, path, 0.4) for _ in range(6)]
    for task_id in task_ids:
        platform.api.value(task_id)
    with open(path) as lines:
        intervals = [tuple(map(float, line.split()[:2])) for line in lines]
    overlap = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert overlap == 2


def test_function_exception_comes_back_as_itself(platform):
    failure = platform.api.failure(platform.api.submit(platform.api.register(ff.raise_value_error), "nope"))
    assert isinstance(failure, ValueError) and str(failure) == "nope"
    assert "raise_value_error" in failure.remote_traceback


def test_missing_argument_is_the_functions_type_error(platform):
    failure = platform.api.failure(platform.api.submit(platform.api.register(ff.add), 1))
    assert isinstance(failure, TypeError) and "missing" in str(failure)


def test_non_callable_payload_fails_with_function_failed(platform):
    failure = platform.api.failure(platform.api.submit(platform.api.register(42)))
    assert isinstance(failure, FunctionFailedException)


def test_unserializable_result_fails_with_function_failed(platform):
    failure = platform.api.failure(platform.api.submit(platform.api.register(ff.return_unpicklable)))
    assert isinstance(failure, FunctionFailedException) and "serialized" in str(failure)


@pytest.mark.parametrize("killer, reason", [(ff.exit_process, "exited with code 3"),
                                            (ff.kill_self_with_sigkill, "SIGKILL")])
def test_process_death_fails_only_its_task(platform, killer, reason):
    args = (3,) if killer is ff.exit_process else ()
    failure = platform.api.failure(platform.api.submit(platform.api.register(killer), *args))
    assert isinstance(failure, WorkerFailureException) and reason in str(failure)
    add = platform.api.register(ff.add)
    assert [platform.api.value(platform.api.submit(add, i, 1)) for i in range(4)] == [1, 2, 3, 4]


def test_deadline_overrun_fails_within_deadline_plus_grace(platform):
    function_id = platform.api.register(ff.sleep_then)
    started = time.monotonic()
    failure = platform.api.failure(platform.api.submit(function_id, 30, timeout=1.5))
    assert isinstance(failure, WorkerFailureException) and "timed out after 1.5 s" in str(failure)
    assert time.monotonic() - started < 1.5 + 4.0
    assert platform.api.value(platform.api.submit(function_id, 0, "next")) == "next"


# Last in the module: its database access flushes the tables when it ends.
@pytest.mark.django_db(transaction=True)
def test_one_task_and_many(platform):
    function_id = platform.api.register(ff.add)
    assert platform.api.value(platform.api.submit(function_id, 1, 2)) == 3
    task_ids = [platform.api.submit(function_id, i, i) for i in range(60)]
    assert [platform.api.value(t) for t in task_ids] == [2 * i for i in range(60)]
    wait_until(lambda: Task.objects.filter(id__in=task_ids, status="COMPLETED").count() == 60, timeout=10,
               message="the database did not catch up with Redis")
    wait_until(lambda: (Worker.objects.aggregate(n=Sum("tasks_done"))["n"] or 0) >= 60, timeout=10,
               message="workers' finished-task counts did not reach the database")
