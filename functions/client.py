"""The Python client (SDK): register functions, submit calls, wait for results, cancel.

Needs only urllib3, dill and the Django-free `workers` package, so it imports on any
machine without Django or settings. `FaaSExecutor` (a `concurrent.futures.Executor` over
this client) lives in functions.executor and is re-exported here.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import dill

from functions.collector import ResultCollector
from functions.shipping import Shipper
from functions.transport import ClientError, Transport, TransportError
from workers.exceptions import FunctionFailedException, WorkerFailureException
from workers.protocol import TaskStatus
from workers.serialization import decode, encode

__all__ = ["APIError", "ClientError", "FaaSClient", "FaaSExecutor", "FunctionFailedException",
           "TaskFuture", "TransportError", "WorkerFailureException"]

MAX_WAIT = 60.0  # the server's cap on one /result?wait= long-poll, in seconds
FINAL = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)
BATCH_CALLS = 1000  # calls per /execute_batch request (the server takes up to 10,000)
BATCH_BYTES = 8 * 1024 * 1024  # base64 text per /execute_batch request, well under the body cap
CONNECTIONS = 32  # keep-alive connections per client: the executor's waiters share them
CLIENT_ENVIRONMENT = {"python": ".".join(map(str, sys.version_info[:3])), "dill": dill.__version__}
RESEND_DELAYS = (0.2, 1.0, 2.0)  # back-off of a submit resent after no answer (same idempotency key)


class APIError(ClientError):
    """The server refused a request: `status_code`, and `detail` from its JSON error body.
    From `submit_batch`, `task_ids` lists the tasks queued before the refusal."""

    def __init__(self, status_code: int, detail, method: str, url: str):
        self.status_code, self.detail, self.method, self.url = status_code, detail, method, url
        self.task_ids: list[str] = []
        super().__init__(f"{method} {url} answered {status_code}: {_sentence(detail)}")


def _sentence(detail) -> str:
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        return str(detail["detail"])
    return str(detail)


class FaaSClient:
    """One platform, one user: `base_url` of the web server and a DRF token (default:
    the FAAS_TOKEN environment variable; none for a server that allows anonymous use).
    `timeout` bounds every HTTP request; waits for results add their own time on top.
    `prefetch`: how many of this client's other unfinished tasks a wait for results also
    asks after (functions.collector); 0 asks only for what the caller waits for.
    Thread-safe: one pool of keep-alive connections is shared by every thread."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0,
                 shipper: Shipper | None = None, prefetch: int = 1000):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.shipper = shipper or Shipper()
        token = token if token is not None else os.environ.get("FAAS_TOKEN")
        self.transport = Transport(self.base_url, {"Authorization": f"Token {token}"} if token else {},
                                   connections=CONNECTIONS)
        self.collector = ResultCollector(self.poll_many, self.poll, prefetch=prefetch, max_wait=MAX_WAIT)

    # --- functions and tasks --------------------------------------------------------------

    def register(self, fn: Callable, name: str | None = None, *, by_value: bool = True) -> str:
        """Register `fn`; returns its function id. `by_value=False` pickles it by reference,
        for functions whose module every worker has installed."""
        if not callable(fn):
            raise TypeError(f"register() needs a callable, not a {type(fn).__name__}")
        payload = self.shipper.dumps(fn) if by_value else dill.dumps(fn)
        return self.register_payload(name or _name_of(fn), payload)

    def register_payload(self, name: str, payload: bytes) -> str:
        """Register already-pickled function bytes."""
        body = {"name": name[:200], "payload": encode(payload), **CLIENT_ENVIRONMENT}
        return self._call("POST", "/register_function", json=body)["function_id"]

    def submit(self, function_id: str, /, *args, **kwargs) -> str:
        """Queue `fn(*args, **kwargs)`; returns the task id."""
        return self.submit_with(function_id, args, kwargs)

    def submit_with(self, function_id: str, args: Iterable = (), kwargs: dict | None = None, *,
                    timeout: float | None = None, idempotency_key: str | None = None) -> str:
        """`submit` with the call spelled out, leaving room for options such as a
        `timeout` (the task's deadline in seconds: past it the task FAILS) and an
        `idempotency_key` (default: a fresh one, so a resend never queues a second task;
        give your own to make a submit repeatable across processes)."""
        task_id = self._execute(function_id, args, kwargs, timeout, idempotency_key=idempotency_key)["task_id"]
        self.collector.submitted((task_id,))
        return task_id

    def call(self, function_id: str, /, *args, **kwargs):
        """Run `fn(*args, **kwargs)` and return its value (or raise its exception), in one
        request the server holds until the task finishes."""
        return self.outcome(self.submit_and_wait(function_id, args, kwargs))

    def submit_and_wait(self, function_id: str, args: Iterable = (), kwargs: dict | None = None, *,
                        timeout: float | None = None) -> dict:
        """Queue a call and return its final /result body (never raising the task's error):
        one POST /execute_function?wait= that the server holds up to a minute, then, for a
        longer task, `wait` on its id. `timeout` is the task's deadline, as for `submit_with`."""
        answer = self._execute(function_id, args, kwargs, timeout, wait=MAX_WAIT)
        return answer if answer.get("status") in FINAL else self.wait(answer["task_id"])

    def _execute(self, function_id: str, args: Iterable, kwargs: dict | None, timeout: float | None,
                 wait: float = 0.0, idempotency_key: str | None = None) -> dict:
        """One POST /execute_function; with `wait`, the server holds it until the task finishes."""
        body = {"function_id": function_id, "payload": self.encode_call(args, kwargs or {}),
                "idempotency_key": idempotency_key or new_idempotency_key()}
        if timeout is not None:
            body["timeout"] = timeout
        params = {"wait": f"{wait:g}"} if wait else None
        return self._submit("/execute_function", body, params=params, timeout=self.timeout + wait)

    def submit_batch(self, function_id: str, calls: Iterable[tuple[Iterable, dict]], /, *,
                     timeout: float | None = None) -> list[str]:
        """Queue many calls of one function, each `(args, kwargs)`; returns the task ids in
        order. Large batches go in several requests; if one fails, the APIError carries the
        ids already queued as `task_ids`."""
        ids = self.submit_payloads(function_id, (self.encode_call(*_call_pair(call)) for call in calls),
                                   timeout=timeout)
        self.collector.submitted(ids)
        return ids

    def submit_payloads(self, function_id: str, payloads: Iterable[str], *, timeout: float | None = None) -> list[str]:
        """`submit_batch` of calls already encoded (`encode_call`), without remembering the
        ids for `result`: the executor collects its own."""
        ids: list[str] = []
        for chunk in _chunks(payloads):
            body = {"function_id": function_id, "payloads": chunk, "idempotency_key": new_idempotency_key()}
            if timeout is not None:
                body["timeout"] = timeout
            try:
                ids += self._submit("/execute_batch", body)["task_ids"]
            except APIError as exc:
                exc.task_ids = ids
                raise
        return ids

    def status(self, task_id: str) -> str:
        """QUEUED, RUNNING, COMPLETED or FAILED."""
        return self._call("GET", f"/status/{task_id}")["status"]

    def result(self, task_id: str | Iterable[str], timeout: float | None = None):
        """The task's return value, waiting up to `timeout` seconds (None: as long as it
        takes); for a list of ids, the list of their values, gathered in a few requests.
        A failed task raises its exception (the first failed one in the list's order): the
        function's own type with `.remote_traceback`, or WorkerFailureException /
        FunctionFailedException. Raises TimeoutError if not finished in time."""
        if not isinstance(task_id, str):
            return self.results(list(task_id), timeout)
        body = self.wait(task_id, timeout)
        if body["status"] not in FINAL:
            raise TimeoutError(f"task {task_id} is still {body['status']} after {timeout:g} s")
        return self.outcome(body)

    def results(self, task_ids: list[str], timeout: float | None = None) -> list:
        """The values of many tasks, in order, once all are final (see `result`)."""
        bodies = self.wait_many(task_ids, timeout)
        late = [t for t in task_ids if t not in bodies]
        if late:
            raise TimeoutError(f"{len(late)} of {len(task_ids)} tasks are not finished after {timeout:g} s "
                               f"(the first: {late[0]})")
        return [self.outcome(bodies[t]) for t in task_ids]

    def wait(self, task_id: str, timeout: float | None = None) -> dict:
        """The /result body once the task is final or `timeout` has passed, through the
        server's long-poll in chunks of at most a minute; never raises the task's error."""
        body = self.collector.collect([task_id], timeout).get(task_id)
        return body if body is not None else self.poll(task_id)

    def wait_many(self, task_ids: list[str], timeout: float | None = None) -> dict[str, dict]:
        """{task id: final /result body} once all of `task_ids` are final, or those that are
        when `timeout` passes; never raises the tasks' errors."""
        return self.collector.collect(task_ids, timeout)

    def as_completed(self, task_ids: Iterable[str], timeout: float | None = None) -> Iterator[str]:
        """Yield the task ids as their tasks finish; `result(task_id)` then answers without
        a request. Raises TimeoutError when `timeout` (from this call) passes first."""
        end = None if timeout is None else time.monotonic() + timeout
        pending = list(dict.fromkeys(task_ids))
        while pending:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(pending)} tasks are not finished after {timeout:g} s")
            bodies = self.collector.collect(pending, left, need=1)
            self.collector.put_back(bodies.values())
            for task_id in bodies:
                yield task_id
            pending = [t for t in pending if t not in bodies]

    def poll_many(self, task_ids: list[str], wait: float = 0.0, at_least: int = 1) -> tuple[list[dict], dict]:
        """One POST /results: (final /result bodies, {task id: status} of the others), held
        by the server up to `wait` seconds until `at_least` of them are final."""
        wait = min(max(wait, 0.0), MAX_WAIT)
        body = self._call("POST", "/results", json={"task_ids": task_ids, "wait": round(wait, 3), "min": at_least},
                          timeout=self.timeout + wait)
        return body["results"], body["pending"]

    def poll(self, task_id: str, wait: float = 0.0) -> dict:
        """One /result request, held by the server up to `wait` seconds (at most a minute)."""
        wait = min(max(wait, 0.0), MAX_WAIT)
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return self._call("GET", f"/result/{task_id}", params=params, timeout=self.timeout + wait)

    def register_with(self, fn: Callable, name: str | None = None, *, retry: dict | None = None,
                      by_value: bool = True) -> str:
        """`register`, with a default retry policy for the function's tasks, e.g.
        `{"max_retries": 3, "backoff": 1, "backoff_max": 60, "retry_on": ["ConnectionError"]}`."""
        if not callable(fn):
            raise TypeError(f"register() needs a callable, not a {type(fn).__name__}")
        payload = self.shipper.dumps(fn) if by_value else dill.dumps(fn)
        body = {"name": (name or _name_of(fn))[:200], "payload": encode(payload), "retry": retry}
        return self._call("POST", "/register_function", json=body)["function_id"]

    def submit_later(self, function_id: str, args: Iterable = (), kwargs: dict | None = None, *,
                     countdown: float | None = None, eta=None, timeout: float | None = None,
                     retry: dict | None = None) -> str:
        """Queue a call that runs no earlier than `countdown` seconds from now, or than `eta`
        (a datetime, or ISO 8601 text); it waits on the server, not in a worker. `retry`
        (a policy, as for `register_with`) overrides the function's for this task."""
        body = {"function_id": function_id, "payload": self.encode_call(args, kwargs or {})}
        for name, value in (("countdown", countdown), ("eta", _iso(eta)), ("timeout", timeout), ("retry", retry)):
            if value is not None:
                body[name] = value
        return self._call("POST", "/execute_function", json=body)["task_id"]

    def progress(self, task_id: str) -> tuple[float, str] | None:
        """(fraction, message) the running task last reported with
        `workers.progress.report_progress`; None when it is not running or has reported nothing."""
        body = self._call("GET", f"/status/{task_id}")
        return (body["progress"], body.get("progress_message", "")) if "progress" in body else None

    def output(self, task_id: str) -> str | None:
        """What the task's function printed to stdout and stderr and logged (the last 64 KiB,
        with a note when cut), once the task is final; None while it is not."""
        body = self.poll(task_id)
        return body.get("output", "") if body["status"] in FINAL else None

    def cancel(self, task_id: str, *, queued_only: bool = False) -> bool:
        """Cancel a task: a queued one never runs, a running one has its process stopped
        (unless `queued_only`). Either way it FAILS with WorkerFailureException("cancelled").
        False if it had already finished (or, with `queued_only`, started)."""
        try:
            self._call("POST", f"/cancel/{task_id}" + ("?queued_only=1" if queued_only else ""))
        except APIError as exc:
            if exc.status_code == 409:
                return False
            raise
        return True

    # --- listing --------------------------------------------------------------------------

    def tasks(self, *, status: str | None = None, function_id: str | None = None, since=None, until=None,
              page_size: int = 100) -> Iterator[dict]:
        """The caller's tasks, newest first, as dicts (task_id, function_id, function_name,
        status, attempts, created_at, started_at, finished_at, error), fetched page by page
        as the iteration goes. `since`/`until` are datetimes or ISO 8601 text."""
        params = {"status": status, "function": function_id, "since": _iso(since), "until": _iso(until)}
        return self._pages("/tasks", {k: v for k, v in params.items() if v}, page_size)

    def functions(self, *, page_size: int = 100) -> Iterator[dict]:
        """The caller's functions, newest first: function_id, name, payload_size, created_at."""
        return self._pages("/functions", {}, page_size)

    def function(self, function_id: str) -> dict:
        """One function, with `tasks`: how many of its tasks are in each status."""
        return self._call("GET", f"/functions/{function_id}")

    def delete_function(self, function_id: str) -> int:
        """Delete a function and the record of its finished tasks; returns how many went.
        APIError 409 while any of its tasks is queued or running."""
        return self._call("DELETE", f"/functions/{function_id}")["deleted_tasks"]

    def _pages(self, path: str, params: dict, page_size: int) -> Iterator[dict]:
        cursor = None
        while True:
            query = {**params, "limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", path, params=query)
            yield from page["results"]
            cursor = page["next"]
            if not cursor:
                return

    # --- payloads -------------------------------------------------------------------------

    def encode_call(self, args: Iterable, kwargs: dict) -> str:
        """The execute payload: base64 of the pickled `((args...), {kwargs})`."""
        return encode(self.shipper.dumps((tuple(args), dict(kwargs))))

    def outcome(self, body: dict):
        """The value of a finished /result body, or raise the task's exception."""
        if body.get("expired"):
            raise ClientError(f"the result of task {body['task_id']} ({body['status']}) has expired: the server "
                              f"keeps results for FAAS_RESULT_TTL; {body.get('error') or ''}".rstrip("; "))
        if body["status"] == "COMPLETED":
            try:
                return self.shipper.loads(decode(body["result"]))
            except Exception as exc:
                raise ClientError(f"task {body['task_id']} completed, but its result cannot be "
                                  f"unpickled here: {type(exc).__name__}: {exc}") from exc
        raise self.failure(body)

    def failure(self, body: dict) -> Exception:
        """The exception of a FAILED /result body, rebuilt here when possible."""
        error = body.get("error") or "the task failed"
        try:
            exc = self.shipper.loads(decode(body["result"]))
        except Exception as why:
            exc = FunctionFailedException(f"{error}\n(the exception cannot be unpickled here: "
                                          f"{type(why).__name__}: {why})")
        if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: never raise those here
            cause, exc = exc, FunctionFailedException(f"the function raised {_repr(exc)}\n{error}")
            exc.__cause__ = cause
        for name, value in (("remote_traceback", None), ("task_id", body.get("task_id"))):
            if not hasattr(exc, name):
                try:
                    setattr(exc, name, value)
                except (AttributeError, TypeError):
                    pass
        return exc

    # --- HTTP -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, timeout: float | None = None, params: dict | None = None,
              json: dict | None = None) -> dict:
        status, body, text = self.transport.request(method, path, params=params, json_body=json,
                                                    timeout=timeout or self.timeout)
        if status >= 400 or not isinstance(body, dict):
            raise APIError(status, body if body is not None else text, method, self.base_url + path)
        return body

    def _submit(self, path: str, body: dict, *, params: dict | None = None, timeout: float | None = None) -> dict:
        """POST a keyed submit; when no answer came back (the connection broke, the server
        timed out), send the very same body again: its idempotency key makes the server
        answer the task the first attempt queued, so nothing runs twice."""
        for delay in RESEND_DELAYS:
            try:
                return self._call("POST", path, json=body, params=params, timeout=timeout)
            except TransportError:
                time.sleep(delay)
        return self._call("POST", path, json=body, params=params, timeout=timeout)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> FaaSClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaaSClient({self.base_url!r})"


def new_idempotency_key() -> str:
    """A key naming one submit; the client reuses it for every resend of that submit."""
    return uuid.uuid4().hex


def _name_of(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _iso(when) -> str | None:
    return when.isoformat() if hasattr(when, "isoformat") else when


def _repr(obj) -> str:
    try:
        return repr(obj)[:500]
    except Exception:
        return type(obj).__name__


def _call_pair(call) -> tuple[Iterable, dict]:
    if not (isinstance(call, (tuple, list)) and len(call) == 2 and isinstance(call[1], dict)):
        raise TypeError(f"each call is an (args, kwargs) pair such as ((1, 2), {{}}), not {_repr(call)}")
    return call[0], call[1]


def _chunks(payloads: Iterable[str]) -> Iterator[list[str]]:
    """Group payloads into request-sized lists."""
    chunk, size = [], 0
    for payload in payloads:
        if chunk and (len(chunk) >= BATCH_CALLS or size + len(payload) > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(payload)
        size += len(payload)
    if chunk:
        yield chunk


from functions.executor import FaaSExecutor, TaskFuture  # noqa: E402  (the executor builds on the client)
