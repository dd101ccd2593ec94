"""FaaSExecutor: the platform as a `concurrent.futures.Executor`.

Tasks are submitted over HTTP in the caller's thread, so a Future always has a task id.
A few waiter threads resolve the futures through the server's long-poll, each watching the
oldest unresolved task nobody else watches: the dispatcher runs tasks in queue order, so
those are the ones that finish next. No thread per task and no polling loop.
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

from functions.transport import TransportError
from workers.protocol import TaskStatus

if TYPE_CHECKING:
    from functions.client import FaaSClient

log = logging.getLogger(__name__)

FINAL = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)
WAITERS = 4  # threads resolving futures; each holds one long-poll open at a time
POLL_WAIT = 30.0  # seconds one long-poll is held before the waiter asks again
RETRY_FOR = 60.0  # seconds a waiter keeps retrying a task through network or server errors
RETRY_PAUSE = 1.0  # seconds between those retries


class TaskFuture(Future):
    """A Future for one task, with its `task_id`. `cancel()` cancels a task that has not
    started (it then never runs) and, like any Future, returns False once the task runs
    or has finished; `FaaSClient.cancel(future.task_id)` stops a running one."""

    def __init__(self, executor: FaaSExecutor, task_id: str, seq: int):
        super().__init__()
        self.executor, self.task_id, self.seq = executor, task_id, seq
        self.settling = threading.Lock()  # held while cancelling or resolving: one of them wins
        self.failing_since: float | None = None

    def cancel(self) -> bool:
        if self.running() or self.done():
            return self.cancelled()
        with self.settling:
            if not self.done() and self.executor._cancel_queued(self):
                super().cancel()
                self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: wakes wait()/as_completed()
                self.executor._forget(self)
            return self.cancelled()

    def __lt__(self, other: TaskFuture) -> bool:  # heap order: oldest first
        return self.seq < other.seq

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self._state}>"


class FaaSExecutor(Executor):
    """Run callables on the platform: `submit` registers each function once and returns a
    TaskFuture; `map` submits in batches and yields in order. `task_timeout` is every
    task's deadline in seconds; `waiters` the number of threads resolving futures."""

    def __init__(self, client: FaaSClient, *, waiters: int = WAITERS, task_timeout: float | None = None,
                 poll_wait: float = POLL_WAIT, by_value: bool = True):
        if waiters < 1:
            raise ValueError("waiters must be at least 1")
        self.client, self.waiters, self.task_timeout = client, waiters, task_timeout
        self.poll_wait, self.by_value = poll_wait, by_value
        self._cond = threading.Condition()
        self._queue: list[TaskFuture] = []  # heap of futures nobody is watching
        self._unresolved: set[TaskFuture] = set()
        self._threads: list[threading.Thread] = []
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
        """Like Executor.map, but every call is submitted at once in batch requests;
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
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        if not calls:
            return []
        function_id = self.function_id(fn)
        if len(calls) == 1:
            (args, kwargs), = calls
            ids = [self.client.submit_with(function_id, args, kwargs, timeout=self.task_timeout)]
        else:
            ids = self.client.submit_batch(function_id, calls, timeout=self.task_timeout)
        futures = [TaskFuture(self, task_id, next(self._seq)) for task_id in ids]
        with self._cond:
            self._unresolved.update(futures)
            for future in futures:
                heapq.heappush(self._queue, future)
            self._start_waiters()
            self._cond.notify(len(futures))
        return futures

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
                future = heapq.heappop(self._queue)
            if not future.done():
                self._check(future)

    def _check(self, future: TaskFuture) -> None:
        """One long-poll for `future`'s task: resolve it, or put it back to be watched again."""
        try:
            body = self.client.poll(future.task_id, self.poll_wait)
        except Exception as exc:
            if _transient(exc) and _still_retrying(future):
                log.warning("waiting for task %s: %s; retrying", future.task_id, exc)
                time.sleep(RETRY_PAUSE)
                return self._requeue(future)
            return self._settle(future, exception=exc)
        future.failing_since = None
        if body["status"] not in FINAL:
            if body["status"] == TaskStatus.RUNNING.value:
                with future.settling:
                    if not future.done() and not future.running():
                        future.set_running_or_notify_cancel()
            return self._requeue(future)
        try:
            value = self.client.outcome(body)
        except Exception as exc:
            self._settle(future, exception=exc)
        else:
            self._settle(future, value=value)

    def _requeue(self, future: TaskFuture) -> None:
        with self._cond:
            if not future.done():
                heapq.heappush(self._queue, future)
                self._cond.notify()

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
            if self.client.cancel(future.task_id, queued_only=True):
                return True
            if self.client.status(future.task_id) == TaskStatus.RUNNING.value:
                future.set_running_or_notify_cancel()
            return False
        except Exception as exc:  # Future.cancel() answers; it does not raise
            log.warning("could not cancel task %s: %s", future.task_id, exc)
            return False

    def _stop(self, future: TaskFuture) -> None:
        try:
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
            for thread in list(self._threads):
                thread.join()


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
