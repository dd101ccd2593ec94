"""What a pool child does with one task: unpickle the call, run it, serialize the outcome.

Every failure becomes a FAILED outcome whose result is the dill bytes of an exception,
so nothing a user function does (short of killing its process) escapes `run_call`.
Standard library and dill only.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable

from workers.exceptions import FunctionFailedException
from workers.protocol import Result, TaskStatus
from workers.retrying import matches
from workers.serialization import dumps, loads

FUNCTION_CACHE_SIZE = 64  # unpickled functions one child keeps, oldest dropped first

COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value


def run_call(
    task_id: str,
    function: bytes,
    arguments: bytes,
    max_result_bytes: int,
    function_cache: dict | None = None,
    *,
    function_id: str | None = None,
    retry_on: tuple[str, ...] = (),
) -> Result:
    """Run one serialized call and return its serialized outcome; never raises.

    `function_cache` maps `function_id` (or, without one, the function bytes) to the
    unpickled callable, so a child running the same function again skips dill. An
    exception of a class named in `retry_on` marks the result as one to retry (its
    task's retry policy decides whether any retry is left).
    """
    started_at = time.time()
    try:
        func = _load_function(function, function_cache, function_id)
        args, kwargs = _load_arguments(arguments)
    except FunctionFailedException as exc:
        return _failed(task_id, exc, started_at)
    try:
        value = func(*args, **kwargs)
    except BaseException as exc:  # SystemExit too: a function calling sys.exit fails only its task
        result = _raised(task_id, exc, started_at, max_result_bytes)
        return dataclasses.replace(result, retry=True) if retry_on and matches(exc, retry_on) else result
    return _completed(task_id, value, max_result_bytes, started_at)


def _load_function(function: bytes, cache: dict | None, function_id: str | None) -> Callable:
    key = function_id or function
    if cache is not None and (cached := cache.get(key)) is not None:
        return cached
    try:
        func = loads(function)
    except BaseException as exc:  # unpickling runs arbitrary reducers: anything can come out
        raise FunctionFailedException(f"function could not be deserialized: {_describe(exc)}") from None
    if not callable(func):
        raise FunctionFailedException(f"payload is not callable: it is a {type(func).__name__}")
    if cache is not None:
        if len(cache) >= FUNCTION_CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = func
    return func


def _load_arguments(arguments: bytes) -> tuple[tuple, dict]:
    """Accept `((args...), {kwargs})`, or a bare tuple/list of positional arguments."""
    try:
        obj = loads(arguments)
    except BaseException as exc:
        raise FunctionFailedException(f"arguments could not be deserialized: {_describe(exc)}") from None
    if (isinstance(obj, (tuple, list)) and len(obj) == 2
            and isinstance(obj[0], (tuple, list)) and isinstance(obj[1], dict)):
        args, kwargs = obj
    elif isinstance(obj, (tuple, list)):
        args, kwargs = obj, {}
    else:
        raise FunctionFailedException(
            f"arguments must be ((args...), {{kwargs}}) or a tuple of arguments, not a {type(obj).__name__}")
    if not all(isinstance(name, str) for name in kwargs):
        raise FunctionFailedException("keyword argument names must be strings")
    return tuple(args), kwargs


def _completed(task_id: str, value, max_result_bytes: int, started_at: float) -> Result:
    try:
        payload = dumps(value)
    except BaseException as exc:
        return _failed(task_id, FunctionFailedException(f"result could not be serialized: {_describe(exc)}"),
                       started_at)
    if len(payload) > max_result_bytes:
        return _failed(task_id, FunctionFailedException(
            f"result is {len(payload)} bytes, over the limit of {max_result_bytes} bytes"), started_at)
    return Result(task_id, COMPLETED, payload, "", started_at, time.time())


def _raised(task_id: str, exc: BaseException, started_at: float, max_result_bytes: int) -> Result:
    """Send back the function's own exception, with the remote traceback attached."""
    tb = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))  # skip run_call's frame
    error = f"{_describe(exc)}\n{text}"
    try:
        exc.remote_traceback = text
        exc.add_note(f"Remote traceback:\n{text}")
        payload = dumps(exc)
        loads(payload)  # an exception class that cannot be rebuilt must fail here, not on the client
    except BaseException as why:
        return _unpicklable(task_id, exc, text, error, why, started_at)
    if len(payload) > max_result_bytes:
        return _unpicklable(task_id, exc, text, error, f"{len(payload)} bytes, over the limit", started_at)
    return Result(task_id, FAILED, payload, error, started_at, time.time())


def _unpicklable(task_id: str, exc: BaseException, text: str, error: str, why, started_at: float) -> Result:
    fallback = FunctionFailedException(
        f"the function raised {_safe_repr(exc)}, which could not be serialized ({why})\n{text}")
    fallback.remote_traceback = text
    return Result(task_id, FAILED, dumps(fallback), error, started_at, time.time())


def _failed(task_id: str, exc: FunctionFailedException, started_at: float) -> Result:
    return Result(task_id, FAILED, dumps(exc), _describe(exc), started_at, time.time())


def _describe(exc: BaseException) -> str:
    """`ValueError: message`, even when the exception's own __str__ is broken."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _safe_repr(obj) -> str:
    try:
        return repr(obj)[:1000]
    except Exception:
        return f"<{type(obj).__name__}>"
