"""workers.execution.run_call: every way a call can end, run in this process."""

from __future__ import annotations

import time
import traceback

import pytest

from tests import fixtures_functions as ff
from workers.exceptions import FunctionFailedException
from workers.execution import FUNCTION_CACHE_SIZE, run_call
from workers.protocol import Result
from workers.serialization import DEFAULT_MAX_PAYLOAD_BYTES, dumps, loads

CAP = DEFAULT_MAX_PAYLOAD_BYTES


def call(func, *args, cap: int = CAP, **kwargs) -> Result:
    return run_call("t-1", dumps(func), dumps((args, kwargs)), cap)


def failure(outcome: Result) -> BaseException:
    assert outcome.status == "FAILED", outcome
    exc = loads(outcome.result)
    assert isinstance(exc, BaseException)
    return exc


def test_success_with_args_and_kwargs():
    before = time.time()
    outcome = call(ff.add, 2, b=3)
    assert outcome.status == "COMPLETED"
    assert loads(outcome.result) == 5
    assert outcome.error == ""
    assert before <= outcome.started_at <= outcome.finished_at <= time.time()


@pytest.mark.parametrize("arguments", [(2, 3), [2, 3], ((2, 3), {}), [[2], {"b": 3}]])
def test_accepted_argument_shapes(arguments):
    outcome = run_call("t-1", dumps(ff.add), dumps(arguments), CAP)
    assert (outcome.status, loads(outcome.result)) == ("COMPLETED", 5)


@pytest.mark.parametrize("arguments", [{"a": 1}, 42, "ab", None])
def test_other_argument_shapes_fail(arguments):
    exc = failure(run_call("t-1", dumps(ff.add), dumps(arguments), CAP))
    assert isinstance(exc, FunctionFailedException)
    assert "arguments must be" in str(exc)


def test_keyword_names_must_be_strings():
    exc = failure(run_call("t-1", dumps(ff.add), dumps(((1,), {2: 3})), CAP))
    assert isinstance(exc, FunctionFailedException)


def test_undecodable_arguments():
    exc = failure(run_call("t-1", dumps(ff.noop), b"\x80junk", CAP))
    assert isinstance(exc, FunctionFailedException)
    assert "arguments could not be deserialized" in str(exc)


def test_function_exception_comes_back_with_remote_traceback():
    outcome = call(ff.nested_failure)
    exc = failure(outcome)
    assert type(exc) is KeyError
    assert "_helper_that_fails" in exc.remote_traceback
    assert "run_call" not in exc.remote_traceback  # our own frame is trimmed
    assert any("_helper_that_fails" in note for note in exc.__notes__)
    assert "_helper_that_fails" in "".join(traceback.format_exception(exc))
    assert outcome.error.startswith("KeyError: 'missing'\n")
    assert "_helper_that_fails" in outcome.error


def test_value_error_message_and_error_text():
    outcome = call(ff.raise_value_error, "nope")
    exc = failure(outcome)
    assert type(exc) is ValueError and exc.args == ("nope",)
    assert outcome.error.startswith("ValueError: nope")


def test_system_exit_fails_only_the_task():
    exc = failure(call(ff.raise_system_exit))
    assert type(exc) is SystemExit and exc.code == 7


def test_exception_that_cannot_be_rebuilt_falls_back():
    outcome = call(ff.raise_unrebuildable)
    exc = failure(outcome)
    assert isinstance(exc, FunctionFailedException)
    assert "NeedsTwoArguments" in str(exc)
    assert "raise_unrebuildable" in str(exc) and "raise_unrebuildable" in exc.remote_traceback
    assert outcome.error.startswith("NeedsTwoArguments: 1/2")


def test_wrong_arity_is_the_functions_type_error():
    exc = failure(call(ff.noop, 1))
    assert type(exc) is TypeError


@pytest.mark.parametrize("func", [ff.return_unpicklable, ff.return_unreducible])
def test_unpicklable_result(func):
    outcome = call(func)
    exc = failure(outcome)
    assert isinstance(exc, FunctionFailedException)
    assert str(exc).startswith("result could not be serialized: ")
    assert outcome.error.startswith("FunctionFailedException: result could not be serialized")


def test_oversized_result_names_size_and_limit():
    size = len(dumps(b"x" * 5000))
    exc = failure(call(ff.return_big, 5000, cap=1000))
    assert isinstance(exc, FunctionFailedException)
    assert str(exc) == f"result is {size} bytes, over the limit of 1000 bytes"


def test_result_at_the_limit_passes():
    size = len(dumps(b"x" * 5000))
    assert call(ff.return_big, 5000, cap=size).status == "COMPLETED"


def test_non_callable_payload():
    exc = failure(run_call("t-1", dumps(42), dumps(((), {})), CAP))
    assert isinstance(exc, FunctionFailedException)
    assert "not callable" in str(exc) and "int" in str(exc)


def test_undecodable_function_bytes():
    exc = failure(run_call("t-1", b"definitely not a pickle", dumps(((), {})), CAP))
    assert isinstance(exc, FunctionFailedException)
    assert "function could not be deserialized" in str(exc)


def test_function_from_a_missing_module():
    payload = dumps(ff.noop).replace(b"tests.fixtures_functions", b"tests.fixtures_functionX")
    exc = failure(run_call("t-1", payload, dumps(((), {})), CAP))
    assert isinstance(exc, FunctionFailedException)
    assert "No module named" in str(exc)


def test_cache_skips_unpickling_for_a_known_function_id():
    cache: dict = {}
    assert run_call("t-1", dumps(ff.add), dumps((1, 2)), CAP, cache, function_id="f-add").status == "COMPLETED"
    assert cache == {"f-add": ff.add}
    # Same id, bytes that would not unpickle: served from the cache.
    outcome = run_call("t-1", b"garbage", dumps((3, 4)), CAP, cache, function_id="f-add")
    assert loads(outcome.result) == 7


def test_cache_without_id_is_keyed_by_bytes_and_skips_failures():
    cache: dict = {}
    run_call("t-1", dumps(ff.noop), dumps(()), CAP, cache)
    run_call("t-1", b"garbage", dumps(()), CAP, cache)
    assert list(cache) == [dumps(ff.noop)]


def test_cache_is_bounded():
    cache: dict = {}
    for i in range(FUNCTION_CACHE_SIZE + 10):
        run_call("t-1", dumps(ff.noop), dumps(()), CAP, cache, function_id=f"f{i}")
    assert len(cache) == FUNCTION_CACHE_SIZE
    assert "f0" not in cache and f"f{FUNCTION_CACHE_SIZE + 9}" in cache


def test_result_names_its_task():
    result = call(ff.add, 1, 1)
    assert result.task_id == "t-1" and result.status == "COMPLETED" and loads(result.result) == 2
