"""Many results in one connection, from the user's side: the client gathers results, waits
as they complete and resolves executor futures in a handful of requests, against a real
local-mode stack; and a submit request that gets no answer fails its futures, unsent again."""

from __future__ import annotations

import collections
import concurrent.futures
import threading

import pytest

from functions.client import RESEND_DELAYS, ClientError, FaaSClient, FaaSExecutor
from functions.transport import TransportError
from tests import fixtures_functions as ff


class Counted:
    """Wraps a client's transport and counts its requests by method and first path part."""

    def __init__(self, client: FaaSClient):
        self.inner, self.counts, self.lock = client.transport, collections.Counter(), threading.Lock()
        client.transport = self

    def request(self, method, path, **kwargs):
        with self.lock:
            self.counts[f"{method} /{path.strip('/').split('/')[0].split('?')[0]}"] += 1
        return self.inner.request(method, path, **kwargs)

    def close(self):
        self.inner.close()

    def waits(self) -> int:
        return self.counts["POST /results"] + self.counts["GET /result"]


@pytest.fixture
def client(stack):
    url = stack.web()
    stack.dispatcher("local", "-w", "2")
    with FaaSClient(url) as client:
        yield client


def test_submitting_then_fetching_each_result_takes_a_few_requests(client):
    function_id = client.register(ff.add)
    ids = [client.submit(function_id, i, 1) for i in range(200)]
    counted = Counted(client)
    assert [client.result(task_id, timeout=60) for task_id in ids] == [i + 1 for i in range(200)]
    assert counted.waits() <= 10, counted.counts


def test_result_of_a_list_is_the_values_in_order_and_raises_the_first_failure(client):
    add, fail = client.register(ff.add), client.register(ff.raise_value_error)
    ids = client.submit_batch(add, [((i, i), {}) for i in range(100)])
    counted = Counted(client)
    assert client.result(ids, timeout=60) == [2 * i for i in range(100)]
    assert counted.waits() <= 5, counted.counts
    mixed = [client.submit(add, 1, 1), client.submit(fail, "first"), client.submit(fail, "second")]
    with pytest.raises(ValueError, match="first"):
        client.result(mixed, timeout=60)


def test_results_that_do_not_finish_in_time_raise_timeout_error(client):
    function_id = client.register(ff.sleep_then)
    ids = [client.submit(function_id, 0), client.submit(function_id, 30)]
    with pytest.raises(TimeoutError, match="1 of 2"):
        client.results(ids, timeout=1.0)
    client.cancel(ids[1])


def test_as_completed_yields_in_finishing_order_and_result_then_costs_no_request(client):
    function_id = client.register(ff.sleep_then)
    slow, fast = client.submit(function_id, 1.5, "slow"), client.submit(function_id, 0, "fast")
    order = []
    for task_id in client.as_completed([slow, fast], timeout=60):
        counted = Counted(client)
        order.append(client.result(task_id))
        assert counted.waits() == 0
        client.transport = counted.inner
    assert order == ["fast", "slow"]


def test_threads_sharing_a_client_each_get_their_own_results(client):
    function_id = client.register(ff.add)

    def work(n: int) -> list:
        ids = [client.submit(function_id, n, i) for i in range(25)]
        return [client.result(task_id, timeout=60) for task_id in ids]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(work, range(8)))
    assert answers == [[n + i for i in range(25)] for n in range(8)]


def test_executor_submits_and_resolves_many_futures_in_few_requests(client):
    counted = Counted(client)
    with FaaSExecutor(client) as executor:
        futures = [executor.submit(ff.add, i, 1) for i in range(500)]
        assert [f.result(timeout=60) for f in futures] == [i + 1 for i in range(500)]
        assert list(executor.map(ff.add, range(300), range(300))) == [2 * i for i in range(300)]
    assert counted.counts["POST /execute_batch"] <= 60, counted.counts
    assert counted.counts["POST /execute_function"] == 0
    assert counted.waits() <= 60, counted.counts


class Unanswered:
    """A transport whose submit requests never get an answer; everything else is real."""

    def __init__(self, client: FaaSClient):
        self.inner, self.batches, self.keys = client.transport, 0, set()
        client.transport = self

    def request(self, method, path, **kwargs):
        if path.startswith("/execute_batch"):
            self.batches += 1
            self.keys.add(kwargs["json_body"]["idempotency_key"])
            raise TransportError("POST /execute_batch: ReadTimeoutError: timed out")
        return self.inner.request(method, path, **kwargs)

    def close(self):
        self.inner.close()


def test_a_submit_without_an_answer_fails_its_futures_after_resends_under_one_key(client):
    """Resending is safe: the request's idempotency key makes the server queue it at most
    once (tests/test_standout_idempotency.py)."""
    executor = FaaSExecutor(client, linger=0.2)  # both calls go in one request
    function_id = executor.function_id(ff.add)
    assert function_id
    broken = Unanswered(client)
    futures = [executor.submit(ff.add, 1, 2), executor.submit(ff.add, 3, 4)]
    for future in futures:
        with pytest.raises(ClientError, match="may or may not have been queued") as caught:
            future.result(timeout=30)
        assert isinstance(caught.value.__cause__, TransportError)
        assert future.task_id is None
    executor.shutdown()
    assert broken.batches == 1 + len(RESEND_DELAYS) and len(broken.keys) == 1


def test_a_refused_submit_reaches_only_its_own_futures(client):
    with FaaSExecutor(client, linger=0.2) as executor:
        good = executor.submit(ff.add, 1, 2)
        bad = executor.submit(ff.add, 1, 2)
        # a function the server does not know: its calls are refused, the other call's are not
        executor._functions[id(ff.noop)] = (ff.noop, "00000000-0000-4000-8000-000000000000")
        unknown = executor.submit(ff.noop)
        assert good.result(timeout=60) == 3 and bad.result(timeout=60) == 3
        with pytest.raises(Exception, match="No function with id"):
            unknown.result(timeout=60)


def test_a_vanished_task_among_those_fetched_ahead_does_not_fail_another_result(client, redis_client):
    from functions.models import Task
    from functions.taskstore import keys

    function_id = client.register(ff.add)
    gone, kept = client.submit(function_id, 1, 1), client.submit(function_id, 2, 2)
    assert client.result([gone, kept], timeout=60) == [2, 4]
    kept_again = client.submit(function_id, 3, 3)
    client.collector.submitted([gone])  # as if its result had never been fetched: it is asked after again
    Task.objects.filter(id=gone).delete()
    redis_client.delete(keys.task_key(gone))
    counted = Counted(client)
    assert client.result(kept_again, timeout=60) == 6  # the 404 for `gone` is not this task's error
    assert counted.counts["POST /results"] == 1 and counted.waits() == 2
