"""Retries with back-off: the policy (unit, with fixed randomness and a fake wall clock), the
worker deciding which exceptions match, and a running platform retrying through the
delayed set with the history of attempts in the final error."""

from __future__ import annotations

import random
import time

import pytest

from dispatch.retrying import RetryPlanner
from functions.client import APIError, FaaSClient
from functions.taskstore import QueuedTask
from tests import operator_functions as of
from tests.helpers import wait_until
from tests.platform import start_platform
from workers.retrying import PolicyError, RetryPolicy, matches, retry_record

pytestmark = pytest.mark.django_db


class Boom(ConnectionError):
    pass


def test_policy_back_off_doubles_to_its_cap_with_jitter_between_half_and_all():
    policy = RetryPolicy(max_retries=5, backoff=1.0, backoff_max=5.0, jitter=False)
    assert [policy.delay(a) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(max_retries=5, backoff=2.0, backoff_max=60.0)
    waits = [jittered.delay(2, random.Random(seed)) for seed in range(50)]
    assert all(2.0 <= w <= 4.0 for w in waits) and len(set(waits)) > 40


def test_exception_names_match_by_class_or_qualified_name_through_the_hierarchy():
    assert matches(Boom(), ("ConnectionError",))
    assert matches(Boom(), ("builtins.OSError",))
    assert matches(Boom(), (f"{__name__}.Boom",))
    assert not matches(ValueError(), ("ConnectionError", "KeyError"))


@pytest.mark.parametrize("bad", [{"max_retries": -1}, {"retry_on": []}, {"backoff": "soon"}, {"tries": 3}])
def test_bad_policies_are_refused_with_a_sentence(bad):
    with pytest.raises(PolicyError):
        RetryPolicy.from_dict(bad)


def test_planner_counts_attempts_waits_its_back_off_and_keeps_the_history():
    now = [1000.0]
    planner = RetryPlanner(default_retries=0, wall_clock=lambda: now[0], rng=random.Random(1))
    policy = RetryPolicy(max_retries=2, backoff=10, jitter=False, retry_on=("ConnectionError",))
    q = QueuedTask("t", "f", "", b"", None, 1, retry_record(policy))
    assert planner.retry_on(q) == ("ConnectionError",) and planner.left(q)
    q2, at = planner.next_attempt(q, "ConnectionError: down\nTraceback ...")
    assert (q2.attempt, at) == (2, 1010.0) and planner.left(q2)
    q3, at = planner.next_attempt(q2, "ConnectionError: still down")
    assert (q3.attempt, at) == (3, 1020.0) and not planner.left(q3)
    assert planner.final_error(q3, "ConnectionError: gave up") == (
        "ConnectionError: gave up\n\nEarlier attempts:\nattempt 1: ConnectionError: down\n"
        "attempt 2: ConnectionError: still down")
    lost = QueuedTask("u", "f", "", b"", None, 1)
    assert not RetryPlanner(default_retries=0).left(QueuedTask("u", "f", "", b"", None, 2))
    assert RetryPlanner(default_retries=1).left(lost) and RetryPlanner(default_retries=1).retry_on(lost) == ()


def test_a_running_platform_retries_matching_exceptions_with_back_off(stack, tmp_path):
    platform = start_platform(stack, "local", 1)
    policy = {"max_retries": 3, "backoff": 0.4, "backoff_max": 10, "jitter": False, "retry_on": ["ConnectionError"]}
    with FaaSClient(platform.api.url) as client:
        fid = client.register_with(of.flaky, retry=policy)
        began = time.monotonic()
        task_id = client.submit(fid, str(tmp_path / "a"), 2)
        assert client.result(task_id, timeout=60) == 3
        assert time.monotonic() - began >= 0.4 + 0.8  # two back-offs in the delayed set
        wait_until(lambda: [t["attempts"] for t in client.tasks() if t["task_id"] == task_id] == [3], timeout=15,
                   message="the listing never showed 3 attempts")  # the row follows within a flush

        exhausted = client.submit(fid, str(tmp_path / "b"), 10)
        with pytest.raises(ConnectionError, match="call 4 failed"):
            client.result(exhausted, timeout=60)
        error = client.wait(exhausted)["error"]
        assert "Earlier attempts:\nattempt 1: ConnectionError: call 1 failed" in error
        assert "attempt 3: ConnectionError: call 3 failed" in error

        other = client.submit(fid, str(tmp_path / "c"), 5, "ValueError")  # not in retry_on: fails at once
        with pytest.raises(ValueError):
            client.result(other, timeout=30)
        assert (tmp_path / "c").read_text() == "1"

        once = client.submit_later(fid, (str(tmp_path / "d"), 5), retry={"max_retries": 0})  # per-task override
        with pytest.raises(ConnectionError, match="call 1 failed"):
            client.result(once, timeout=30)
        with pytest.raises(APIError) as refused:
            client.register_with(of.flaky, retry={"max_retries": 1000})
        assert refused.value.status_code == 400 and "max_retries" in str(refused.value.detail)
