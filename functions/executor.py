"""FaaSExecutor: the platform as a `concurrent.futures.Executor`.

`submit` returns its future at once: the call is pickled in the caller's thread (so an
unpicklable argument raises there), then a sender thread packs whatever was submitted
within a short linger (or `batch_calls` calls) into one /execute_batch request. A few
waiter threads resolve the futures through POST /results, each asking after up to
`window` of the oldest unresolved tasks nobody else watches in one long-poll; the server
answers as they finish, many at a time. No thread per task, no request per task, no polling.

A submit request is never sent twice: if it got no answer, its futures fail with the
TransportError (their tasks may or may not have been queued), so no call runs twice.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from typing import TYPE_CHECKING

import dill

from functions.transport import ClientError, TransportError
from workers.protocol import TaskStatus

if TYPE_CHECKING:
    from functions.client import FaaSClient

log = logging.getLogger(__name__)

FINAL = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)
WAITERS = 4  # threads resolving futures; each holds one long-poll open at a time
WINDOW = 500  # unresolved tasks one waiter asks after in one request (the oldest: they finish first)
POLL_WAIT = 5.0  # seconds one long-poll is held before the waiter asks again (and takes in newer tasks)
LINGER = 0.001  # seconds the sender waits for more submits before it sends what it has
BATCH_CALLS = 1000  # calls per submit request
RETRY_FOR = 60.0  # seconds a waiter keeps retrying a task through network or server errors
RETRY_PAUSE = 1.0  # seconds between those retries


class TaskFuture(Future):
    """A Future for one task. `task_id` is known once the sender's request is answered
    (reading it waits for that; None if the submit failed or the future was cancelled
    before it was sent). `cancel()` cancels a task that has not started (it then never
    runs) and, like any Future, returns False once the task runs or has finished;
    `FaaSClient.cancel(future.task_id)` stops a running one."""

    def __init__(self, executor: FaaSExecutor, seq: int):
        super().__init__()
        self.executor, self.seq = executor, seq
        self._task_id: str | None = None
        self._sent = threading.Event()  # set once the task id is known, or will never be
        self.settling = threading.Lock()  # held while cancelling or resolving: one of them wins
        self.failing_since: float | None = None

    @property
    def task_id(self) -> str | None:
        self._sent.wait()
        return self._task_id

    def cancel(self) -> bool:
        if self.running() or self.done():
            return self.cancelled()
        with self.settling:
            if not self.done() and (self.executor._unsend(self) or self.executor._cancel_queued(self)):
                super().cancel()
                self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: wakes wait()/as_completed()
                self._sent.set()
                self.executor._forget(self)
            return self.cancelled()

    def __lt__(self, other: TaskFuture) -> bool:  # heap order: oldest first
        return self.seq < other.seq

    def __repr__(self) -> str:
        return f"<TaskFuture {self._task_id or '(not sent yet)'} {self._state}>"


class FaaSExecutor(Executor):
    """Run callables on the platform: `submit` registers each function once and returns a
    TaskFuture at once; `map` submits every call at once and yields in order.
    `task_timeout` is every task's deadline in seconds; `waiters` the number of threads
    resolving futures; `linger` and `batch_calls` how submits are packed into requests."""

    def __init__(self, client: FaaSClient, *, waiters: int = WAITERS, task_timeout: float | None = None,
                 poll_wait: float = POLL_WAIT, by_value: bool = True, linger: float = LINGER,
                 batch_calls: int = BATCH_CALLS, window: int = WINDOW):
        if waiters < 1:
            raise ValueError("waiters must be at least 1")
        self.client, self.waiters, self.task_timeout = client, waiters, task_timeout
        self.poll_wait, self.by_value = poll_wait, by_value
        self.linger, self.batch_calls, self.window = linger, max(1, batch_calls), max(1, window)
        self._cond = threading.Condition()
        self._outbox: list[tuple[TaskFuture, str, str]] = []  # (future, function id, payload) not sent yet
        self._queue: list[TaskFuture] = []  # heap of sent futures nobody is watching
        self._unresolved: set[TaskFuture] = set()
        self._threads: list[threading.Thread] = []
        self._sender: threading.Thread | None = None
        self._shutdown = False
        self._seq = itertools.count()
        self._register_lock = threading.Lock()
        self._functions: dict[int, tuple[Callable, str]] = {}  # id(fn) -> (fn, function id); fn kept alive
        self._by_digest: dict[bytes, str] = {}

    # --- submitting -----------------------------------------------------------------------

    def submit(self, fn: Callable, /, *args, **kwargs) -> TaskFuture:
        return self._submit_calls(fn, [(args, kwargs)])[0]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like Executor.map, but every call is submitted at once, in batch requests;
        `chunksize` is accepted and ignored. Results come in order; `timeout` counts from
        this call, and on timeout or early exit the unfinished futures are cancelled."""
        end = None if timeout is None else time.monotonic() + timeout
        futures = self._submit_calls(fn, [(args, {}) for args in zip(*iterables)])

        def results():
            try:
                futures.reverse()
                while futures:
                    future = futures.pop()
                    yield future.result() if end is None else future.result(end - time.monotonic())
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def _submit_calls(self, fn: Callable, calls: list[tuple[Iterable, dict]]) -> list[TaskFuture]:
        """Pickle the calls here (errors raise in the caller), queue them for the sender."""
        self._check_open()
        if not calls:
            return []
        function_id = self.function_id(fn)
        payloads = [self.client.encode_call(args, kwargs) for args, kwargs in calls]
        with self._cond:
            self._check_open()
            futures = [TaskFuture(self, next(self._seq)) for _ in payloads]
            self._unresolved.update(futures)
            was_empty = not self._outbox
            self._outbox += [(f, function_id, p) for f, p in zip(futures, payloads)]
            self._start_sender()
            if was_empty or len(self._outbox) >= self.batch_calls:
                self._cond.notify_all()
        return futures

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def function_id(self, fn: Callable) -> str:
        """Register `fn` the first time it is seen (by identity, then by pickled bytes)."""
        with self._register_lock:
            known = self._functions.get(id(fn))
            if known is not None:
                return known[1]
            payload = self.client.shipper.dumps(fn) if self.by_value else dill.dumps(fn)
            digest = hashlib.sha256(payload).digest()
            function_id = self._by_digest.get(digest)
            if function_id is None:
                name = getattr(fn, "__qualname__", None) or type(fn).__name__
                function_id = self._by_digest[digest] = self.client.register_payload(name, payload)
            self._functions[id(fn)] = (fn, function_id)
            return function_id

    def _start_sender(self) -> None:
        """Called with the lock held."""
        if self._sender is None or not self._sender.is_alive():
            # daemon: an interpreter exit need not wait; shutdown(wait=True) does
            self._sender = threading.Thread(target=self._send_loop, name="faas-executor-sender", daemon=True)
            self._sender.start()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._outbox and not self._shutdown:
                    self._cond.wait()
                if not self._outbox:
                    return
                until = time.monotonic() + self.linger
                while len(self._outbox) < self.batch_calls and not self._shutdown:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)  # woken early only by a full batch
                batch, self._outbox = self._outbox[:self.batch_calls], self._outbox[self.batch_calls:]
            for group in _by_function(batch):
                self._send(group)

    def _send(self, group: list[tuple[TaskFuture, str, str]]) -> None:
        """One /execute_batch request for calls of one function; its answer or error goes
        to exactly these futures. The client resends it under the same idempotency key
        when no answer came, so its calls are queued at most once."""
        try:
            ids = self.client.submit_payloads(group[0][1], [p for _, _, p in group], timeout=self.task_timeout)
            error = None
        except Exception as exc:
            ids, error = getattr(exc, "task_ids", []), exc
            if isinstance(exc, TransportError):
                error = ClientError(f"submitting {len(group)} call(s) got no answer ({exc}); they may or may "
                                    f"not have been queued, and are not sent again")  # after the client's resends
                error.__cause__ = exc
        sent = [f for (f, _, _), _ in zip(group, ids)]
        for future, task_id in zip(sent, ids):
            future._task_id = task_id
            future._sent.set()
        with self._cond:
            for future in sent:
                heapq.heappush(self._queue, future)
            self._start_waiters()
            self._cond.notify_all()
        for future, _, _ in group[len(ids):]:
            future._sent.set()
            self._settle(future, exception=error)

    def _unsend(self, future: TaskFuture) -> bool:
        """Take a future out of the outbox before it is sent: its call never leaves."""
        with self._cond:
            for i, (queued, _, _) in enumerate(self._outbox):
                if queued is future:
                    del self._outbox[i]
                    return True
        return False

    # --- resolving ------------------------------------------------------------------------

    def _start_waiters(self) -> None:
        """Called with the lock held: one more waiter per unwatched task, up to `waiters`."""
        self._threads = [t for t in self._threads if t.is_alive()]
        for _ in range(min(self.waiters - len(self._threads), len(self._queue))):
            # daemon: an interpreter exit need not wait for remote tasks, which run on regardless
            thread = threading.Thread(target=self._watch, name="faas-executor-waiter", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._shutdown:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [heapq.heappop(self._queue) for _ in range(min(self.window, len(self._queue)))]
            batch = [f for f in batch if not f.done()]
            if batch:
                self._check(batch)

    def _check(self, batch: list[TaskFuture]) -> None:
        """One long-poll for the batch's tasks: resolve those that finished, put back the rest."""
        try:
            if len(batch) == 1:
                body = self.client.poll(batch[0].task_id, self.poll_wait)
                finals, pending = ([body], {}) if body["status"] in FINAL else ([], {body["task_id"]: body["status"]})
            else:
                finals, pending = self.client.poll_many([f.task_id for f in batch], self.poll_wait)
        except Exception as exc:
            for future in batch:
                if _transient(exc) and _still_retrying(future):
                    continue
                self._settle(future, exception=exc)
            retrying = [f for f in batch if not f.done()]
            if retrying:
                log.warning("waiting for %d task(s): %s; retrying", len(retrying), exc)
                time.sleep(RETRY_PAUSE)
                self._requeue(retrying)
            return
        by_id = {f.task_id: f for f in batch}
        for body in finals:
            future = by_id.pop(body["task_id"], None)
            if future is None:
                continue
            try:
                value = self.client.outcome(body)
            except Exception as exc:
                self._settle(future, exception=exc)
            else:
                self._settle(future, value=value)
        for future in by_id.values():
            future.failing_since = None
            if pending.get(future.task_id) == TaskStatus.RUNNING.value:
                with future.settling:
                    if not future.done() and not future.running():
                        future.set_running_or_notify_cancel()
        self._requeue(list(by_id.values()))

    def _requeue(self, futures: list[TaskFuture]) -> None:
        with self._cond:
            for future in futures:
                if not future.done():
                    heapq.heappush(self._queue, future)
            self._cond.notify_all()

    def _settle(self, future: TaskFuture, value=None, exception: BaseException | None = None) -> None:
        with future.settling:
            try:
                if exception is not None:
                    future.set_exception(exception)
                else:
                    future.set_result(value)
            except InvalidStateError:  # cancelled meanwhile
                pass
        self._forget(future)

    def _forget(self, future: TaskFuture) -> None:
        with self._cond:
            self._unresolved.discard(future)

    def _cancel_queued(self, future: TaskFuture) -> bool:
        """Cancel the task only if it has not started; the server decides atomically."""
        try:
            task_id = future.task_id
            if task_id is None:
                return False
            if self.client.cancel(task_id, queued_only=True):
                return True
            if self.client.status(task_id) == TaskStatus.RUNNING.value:
                future.set_running_or_notify_cancel()
            return False
        except Exception as exc:  # Future.cancel() answers; it does not raise
            log.warning("could not cancel task %s: %s", future.task_id, exc)
            return False

    def _stop(self, future: TaskFuture) -> None:
        try:
            if future.task_id is not None:
                self.client.cancel(future.task_id)
        except Exception as exc:
            log.warning("could not stop task %s: %s", future.task_id, exc)

    # --- shutting down --------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, stop_running: bool = False) -> None:
        """Accept no more work; `cancel_futures` cancels every task not yet started; `wait`
        blocks until every other future has resolved. `stop_running` (not in the Executor
        contract) also stops the running tasks, whose futures raise WorkerFailureException."""
        with self._cond:
            self._shutdown = True
            pending = sorted(self._unresolved)
            self._cond.notify_all()
        if cancel_futures or stop_running:
            for future in pending:
                future.cancel()
        if stop_running:
            for future in pending:
                if not future.done():
                    self._stop(future)
        if wait:
            if self._sender is not None:
                self._sender.join()
            for thread in list(self._threads):
                thread.join()


def _by_function(batch: list[tuple[TaskFuture, str, str]]) -> Iterator[list[tuple[TaskFuture, str, str]]]:
    """Consecutive calls of the same function, in submission order."""
    for _, group in itertools.groupby(batch, key=lambda item: item[1]):
        yield list(group)


def _transient(exc: Exception) -> bool:
    """Network trouble, or a server that is busy or restarting: worth asking again."""
    if isinstance(exc, TransportError):
        return True
    return getattr(exc, "status_code", None) in (429, 502, 503, 504)


def _still_retrying(future: TaskFuture) -> bool:
    now = time.monotonic()
    if future.failing_since is None:
        future.failing_since = now
    return now - future.failing_since < RETRY_FOR

