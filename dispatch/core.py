"""The dispatcher core every mode shares: claim tasks from the task store, hand them to a
mode, record results, fail or retry lost tasks, and pass every change to the database
writer.

A mode subclasses `Dispatcher` and fills in the hooks (`setup`, `capacity`, `send`,
`poll_items`, `on_ready`, `tick`, `cancel_running`, `teardown`). `loop(now)` is one
iteration, so tests drive it step by step with a fake clock and the in-memory store.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

import redis
import zmq

from dispatch.config import DispatcherConfig
from dispatch.delayed import DelayedPromoter
from dispatch.metrics import DispatcherMetrics
from dispatch.recovery import RECLAIM_INTERVAL, Recovery
from dispatch.retention import RetentionSweeper
from dispatch.retrying import RetryPlanner
from dispatch.state import FunctionCache, InFlight
from dispatch.writer import DatabaseWriter
from functions import retention, taskrows
from functions.dashboard import DashboardPublisher
from functions.taskstore import Claim, Claimed, TaskStore
from workers import environment, limits, protocol, serialization
from workers.exceptions import FunctionFailedException, WorkerFailureException
from workers.protocol import Result, TaskStatus

log = logging.getLogger(__name__)

WORKER_FLUSH_INTERVAL = 1.0  # seconds between hand-overs of worker heartbeats to the database writer


class Dispatcher:
    mode = "base"

    def __init__(self, config: DispatcherConfig, clock=time.monotonic, store=None):
        self.config = config
        self.clock = clock
        self.store = store  # made in initialize() unless given (tests pass the in-memory twin)
        self.in_flight: dict[str, InFlight] = {}
        self.unstored: list[tuple[InFlight | None, Result]] = []  # results the store has not taken yet
        self.functions = FunctionCache()
        self.writes: DatabaseWriter | None = None
        self.recovery = Recovery(self)
        self.worker_dirty: dict[str, dict] = {}
        self.worker_done: dict[str, int] = {}  # tasks finished per worker since the last hand-over
        self.stopping = False  # first signal: drain
        self.stopped = False  # second signal, or drained: leave the loop
        self.backlog = True  # the stream may hold entries we have not claimed
        self.next_claim_check = 0.0
        self.claims_held_until = 0.0  # no claims before this: free workers could not run what was queued
        self.function_needs: dict[str, tuple[str, ...]] = {}  # modules each function's pickle imports
        self.task_needs: dict[str, tuple[str, ...]] = {}  # of tasks being handed out (for choose)
        self.next_worker_flush = 0.0
        self.next_reclaim = 0.0
        self.listener = None
        self.publisher = DashboardPublisher()
        self.metrics = DispatcherMetrics(config.consumer, clock)
        self.progress: dict[str, tuple[float, str]] = {}  # reports not yet in the store
        self.retention: RetentionSweeper | None = None  # made with the store
        self.delayed: DelayedPromoter | None = None
        self.retrying = RetryPlanner(config.retries)

    @property
    def consumer(self) -> str:
        return self.config.consumer

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped by a signal: the first drains, a second stops at once."""
        self._install_signals()
        self.initialize()
        try:
            while not self.stopped:
                try:
                    self.loop(self.clock())
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self.recovery.wait_for_redis(exc)
        finally:
            self.shutdown()

    def initialize(self) -> None:
        if self.store is None:
            self.store = TaskStore.connect(self.config.redis_url)
        self.writes = DatabaseWriter(self.config.flush_interval, self.store, self.consumer, self.config.result_ttl,
                                     self.clock)
        self.store.ensure_group()
        self.delayed = DelayedPromoter(self.store)
        self.retention = RetentionSweeper(
            self.store, self.consumer, self.config.retention_interval, clock=self.clock,
            sweep=lambda: retention.sweep(result_ttl=self.config.result_ttl, history_ttl=self.config.history_ttl))
        self.writes.start()
        self.recovery.reconcile()
        self.subscribe()
        self.refresh_liveness()
        self.setup()
        log.info("%s dispatcher %s ready (redis %s)", self.mode, self.consumer, self.config.redis_url)

    def subscribe(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.listener = self.store.listen()

    def refresh_liveness(self) -> None:
        self.store.refresh_liveness(self.consumer, self.mode)

    def shutdown(self) -> None:
        """Fail what is still held (a cold stop), flush, and close everything."""
        try:
            if self.in_flight:
                self.lose(list(self.in_flight), "dispatcher stopped before the task finished")
            self.store_pending()
            self.metrics.flush(self.store)
        except redis.RedisError as exc:
            log.error("Redis is unavailable at shutdown (%s): %d result(s) could not be recorded; "
                      "their tasks are reclaimed by the next dispatcher", exc, len(self.unstored))
        try:
            self.teardown()
        finally:
            self.flush(self.clock(), force=True)
            self.writes.close()
            self.leave()
            log.info("%s dispatcher %s stopped", self.mode, self.consumer)

    def leave(self) -> None:
        try:
            self.store.leave(self.consumer)
        except redis.RedisError as exc:
            log.warning("could not leave the consumer group: %s", exc)
        finally:
            if self.listener is not None:
                self.listener.close()
            self.store.close()

    def _install_signals(self) -> None:
        def handler(signum, frame):  # only set flags: the loop acts (logging here is unsafe)
            if self.stopping:
                self.stopped = True
            self.stopping = True

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # --- one iteration -------------------------------------------------------------------

    def loop(self, now: float) -> None:
        self.read_control()
        if not self.stopping and self.delayed.tick():
            self.backlog = True
        if self.stopping and not self.in_flight and not self.unstored:
            self.stopped = True
            return
        self.exchange(now)
        ready = self.wait(self.poll_timeout(now))
        now = self.clock()
        if ready:
            self.on_ready(ready, now)
            if self.unstored:  # results first: before heartbeats, deadlines and the database flush
                self.exchange(now)
        if self.progress:
            self.store_progress()
        self.tick(now)
        self.expire_deadlines(now)
        if now >= self.next_reclaim:
            self.next_reclaim = now + RECLAIM_INTERVAL
            self.metrics.flush(self.store)
            self.retention.maybe_run(now)
            self.refresh_liveness()
            self.recovery.periodic(now)
        self.flush(now)

    def poll_timeout(self, now: float) -> float:
        """How long to wait for worker events before the next piece of periodic work."""
        wake_at = min(now + self.config.idle_poll, self.next_tick(now), self.publisher.next_due(now),
                      self.next_worker_flush if self.worker_dirty or self.worker_done else now + 1.0)
        if self.unstored or (self.capacity() > 0 and self.backlog and not self.stopping
                             and now >= self.claims_held_until):
            return 0.0
        return max(0.0, wake_at - now)

    def wait(self, timeout: float) -> set:
        self.metrics.wait_begins()
        poller = zmq.Poller()
        items = self.poll_items()
        for item in items:
            poller.register(item, zmq.POLLIN)
        sock = self.listener.socket() if self.listener is not None else None
        if sock is not None:  # wake on pub/sub too
            poller.register(sock, zmq.POLLIN)
        events = dict(poller.poll(int(timeout * 1000)))
        self.metrics.wait_ends()
        return {item for item in items if item in events}

    # --- the queue -----------------------------------------------------------------------

    def read_control(self) -> None:
        """Handle wake-ups and operator commands that arrived on the subscription."""
        for kind, command in self.listener.messages():
            if kind == "wake":
                self.backlog = True
            else:
                self.on_control(command)

    def on_control(self, command: dict) -> None:
        if command.get("command") == "cancel":
            flight = self.in_flight.get(command.get("task_id", ""))
            if flight is not None:
                self.cancel_running(flight.queued.task_id, flight.worker)
        elif command.get("command") == "drain":
            self.drain_worker(command.get("identity", ""))

    def exchange(self, now: float) -> None:
        """Store finished results and claim as many queued tasks as there are free places to
        run them, in one round trip to the store."""
        free = 0 if self.stopping else self.capacity()
        claiming = free > 0 and now >= self.claims_held_until and (self.backlog or now >= self.next_claim_check)
        if not claiming:
            self.store_pending()
            return
        self.next_claim_check = now + self.config.idle_poll
        finished, self.unstored = self.unstored, []
        wall = time.time()
        try:
            won, claimed = self.store.exchange([r for _, r in finished], self.config.result_ttl, self.consumer, free,
                                               wall)
        except (redis.ConnectionError, redis.TimeoutError):
            self.unstored = finished + self.unstored  # nothing is lost: retried once Redis is back
            raise
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.unstored = finished + self.unstored
            log.warning("the task stream vanished (Redis restarted without its data?); recovering")
            self.store.ensure_group()
            self.recovery.reconcile()
            return
        self.after_store(finished, won)
        self.backlog = len(claimed) >= free
        if claimed:
            self.admit(claimed, now, wall)

    def take_over(self, entries: list, now: float) -> list[Claimed]:
        """Entries reclaimed from a dead dispatcher (or our own after an outage): QUEUED ones
        start here; the caller settles the rest."""
        wall = time.time()
        claimed = self.store.start(entries, self.consumer, wall)
        self.admit([c for c in claimed if c.outcome in (Claim.STARTED, Claim.FORGED)], now, wall)
        return claimed

    def admit(self, claimed: list[Claimed], now: float, wall: float) -> None:
        """Hold started entries and hand them to the mode; entries already final (cancelled
        while queued) or not queued by the API are forgotten and never run."""
        refused = [c for c in claimed if c.outcome == Claim.FORGED]
        for c in refused:
            log.warning("refused stream entry %s: no task record queued it (task %s)", c.entry_id,
                        c.task.task_id if c.task else "unreadable")
        self.store.forget([c.entry_id for c in claimed if c.outcome in (Claim.FORGED, Claim.FINAL)])
        started = [c for c in claimed if c.outcome == Claim.STARTED]
        payloads = self.function_payloads({c.task.function_id for c in started})
        tasks = []
        for c in started:
            q = c.task
            timeout = q.timeout if q.timeout is not None else self.config.timeout
            self.in_flight[q.task_id] = InFlight(q, c.entry_id, deadline=None if timeout is None
                                                 else now + timeout + self.config.deadline_grace)
            function = payloads.get(q.function_id)
            if function is None:
                self.fail([q.task_id], FunctionFailedException(f"function {q.function_id} no longer exists"))
                continue
            needs = self.needs_of(q.function_id, function)
            unrunnable = self.cannot_run(needs) if needs else None
            if unrunnable:  # fail now with what is missing, not later with an unpickling traceback
                self.fail([q.task_id], FunctionFailedException(unrunnable))
                continue
            if needs:
                self.task_needs[q.task_id] = needs
            memory_bytes, cpu_seconds = limits.decode(q.limits)
            tasks.append(protocol.Task(q.task_id, q.function_id, function, q.arguments, timeout,
                                       self.config.soft_deadline(timeout), self.retrying.retry_on(q),
                                       memory_bytes, cpu_seconds))
            self.metrics.claimed(c.entry_id, wall)
        if tasks:
            self.hand_out(tasks, wall)

    def hand_out(self, tasks: list[protocol.Task], wall: float) -> None:
        sent = self.send(tasks)
        for task in tasks:
            self.task_needs.pop(task.task_id, None)
        for task_id, identity in sent.items():
            flight = self.in_flight.get(task_id)
            if flight is None:
                continue
            flight.worker = identity
            self.writes.mark_running(task_id, identity, flight.queued.attempt, wall)
            self.publisher.task(task_id, TaskStatus.RUNNING.value)

    # --- environments: send a task only where its modules can be imported ---------------------

    def needs_of(self, function_id: str, payload: bytes) -> tuple[str, ...]:
        """The modules a function's pickle imports, read from its opcodes once per function."""
        needs = self.function_needs.get(function_id)
        if needs is None:
            if len(self.function_needs) > 10_000:
                self.function_needs.clear()
            needs = self.function_needs[function_id] = environment.needed_modules(payload)
        return needs

    def cannot_run(self, needs: tuple[str, ...]) -> str | None:
        """Why no worker of this dispatcher can run a task needing `needs` (None: some can)."""
        return None

    def hold_claims(self, now: float) -> None:
        """Queued work waits for a capable worker: claim again only after a pause, instead of
        claiming and re-queueing it in a tight loop while incapable workers sit idle."""
        self.claims_held_until = now + self.config.idle_poll

    def function_payloads(self, function_ids: set[str]) -> dict[str, bytes]:
        """Payloads from memory, then Redis, then (once per function) the database."""
        found = {fid: data for fid in function_ids if (data := self.functions.get(fid)) is not None}
        missing = sorted(function_ids - found.keys())
        if missing:
            found.update(self.store.function_payloads(missing))
            found.update(taskrows.function_payloads([f for f in missing if f not in found]))
            for fid in missing:
                if fid in found:
                    self.functions.put(fid, found[fid])
        return found

    # --- outcomes ------------------------------------------------------------------------

    def accept_results(self, results: list[Result]) -> None:
        """Results from the worker holding each task (the mode checked the sender); the next
        exchange stores them. A failure the worker marks retryable (a crash, or an exception
        its retry policy names) goes back on the queue while retries remain, as a lost
        worker does; a final failure carries the earlier attempts' errors."""
        retried = {r.task_id: r.error for r in results if r.retry and self._retries_left(r.task_id)}
        if retried and (requeued := self.requeue(list(retried), count_attempt=True, errors=retried)):
            self.metrics.retried(requeued)
            log.warning("re-queued %d task(s) for another attempt", requeued)
        for r in results:
            if r.task_id in retried:
                continue
            flight = self.in_flight.pop(r.task_id, None)
            if r.retry and r.error.startswith(WorkerFailureException.__name__):  # a crash, past its retries
                r = self._last_attempt(r, flight)
            if flight is not None and r.status == TaskStatus.FAILED.value and flight.queued.retry:
                r = dataclasses.replace(r, error=self.retrying.final_error(flight.queued, r.error))
            self.unstored.append((flight, r))

    def _last_attempt(self, r: Result, flight: InFlight | None) -> Result:
        """A crash after retries: the failure names the attempt, so the user sees it ran again."""
        attempt = flight.queued.attempt if flight else 1
        if attempt <= 1:
            return r
        reason = r.error.removeprefix(f"{WorkerFailureException.__name__}: ")
        exc = WorkerFailureException(f"{reason} (attempt {attempt} of {self.config.retries + 1})")
        return Result(r.task_id, r.status, serialization.dumps(exc), f"{type(exc).__name__}: {exc}", r.started_at,
                      r.finished_at)

    def report_progress(self, updates: list[tuple[str, float, str]]) -> None:
        """How far running tasks have got (each worker sends a few a second at most); stored
        within the loop's iteration, the latest per task."""
        for task_id, fraction, message in updates:
            if task_id in self.in_flight:
                self.progress[task_id] = (fraction, message)

    def store_progress(self) -> None:
        reports, self.progress = self.progress, {}
        self.store.progress(reports)

    def _retries_left(self, task_id: str) -> bool:
        flight = self.in_flight.get(task_id)
        return flight is not None and self.retrying.left(flight.queued)

    def fail(self, task_ids: list[str], exc: Exception) -> None:
        """FAIL held tasks with `exc`, recorded at once in one round trip (failures are rare,
        but a dead worker may take many tasks with it)."""
        result, error = serialization.dumps(exc), f"{type(exc).__name__}: {exc}"
        now = time.time()
        for task_id in task_ids:
            flight = self.in_flight.pop(task_id, None)
            if flight is not None:
                self.unstored.append((flight, Result(task_id, TaskStatus.FAILED.value, result,
                                                     self.retrying.final_error(flight.queued, error), None, now)))
        self.store_pending()

    def lose(self, task_ids: list[str], reason: str, retry: bool = True) -> None:
        """Tasks whose worker died, went silent or overran: re-queue while retries remain, else
        FAIL. The message says how many times it ran when it ran more than once."""
        again = [t for t in task_ids if retry and self._retries_left(t)]
        if again and (requeued := self.requeue(again, count_attempt=True,
                                               errors={t: f"WorkerFailureException: {reason}" for t in again})):
            self.metrics.retried(requeued)
            log.warning("re-queued %d task(s): %s", requeued, reason)
        rest = [t for t in task_ids if t not in set(again)]
        for attempt, ids in _by_attempt(rest, self.in_flight).items():
            suffix = f" (attempt {attempt} of {self.config.retries + 1})" if attempt > 1 else ""
            self.fail(ids, WorkerFailureException(reason + suffix))

    def requeue(self, task_ids: list[str], count_attempt: bool, errors: dict[str, str] | None = None) -> int:
        """Put held tasks back on the queue (as new entries) for any dispatcher to take; a
        task that reached a final state meanwhile (a cancel) stays as it is. A counted
        attempt (a retry) records its error and waits its back-off in the delayed set.
        Returns how many went back."""
        items, later = [], {}
        for task_id in task_ids:
            flight = self.in_flight.pop(task_id, None)
            if flight is None:
                continue
            q = flight.queued
            if count_attempt:
                q, not_before = self.retrying.next_attempt(q, (errors or {}).get(task_id, "lost"))
                if not_before is not None:
                    later[task_id] = not_before
            items.append((flight.entry_id, q))
        again = self.store.requeue(items, later)
        self.backlog = True
        return sum(again)

    def store_pending(self) -> None:
        """Final states to Redis now (one round trip), to the database by the writer. The
        list is cleared only once Redis took it, so a Redis outage loses no result."""
        if not self.unstored:
            return
        won = self.store.finish([r for _, r in self.unstored], self.config.result_ttl)
        self.after_store(self.unstored, won)
        self.unstored = []

    def after_store(self, finished: list[tuple[InFlight | None, Result]], won: list[bool]) -> None:
        """The winners (first final state for their task) go to the database, whose writer
        then acknowledges their entries; a loser's entry is simply forgotten."""
        losers = []
        for (flight, r), first in zip(finished, won):
            if not first:
                if flight is not None:
                    losers.append(flight.entry_id)
                continue
            self.writes.finish(r, flight.worker if flight else None, flight.queued.attempt if flight else 1,
                               flight.entry_id if flight else None)
            self.publisher.task(r.task_id, r.status)
            self.metrics.finished(r, flight.queued.function_id if flight else "")
            if flight is not None and flight.worker is not None:
                self.worker_done[flight.worker] = self.worker_done.get(flight.worker, 0) + 1
        self.writes.forget(losers)

    def expire_deadlines(self, now: float) -> None:
        """The dispatcher's backstop: a task far past its deadline is lost (a dead pull worker)."""
        overdue = [t for t, f in self.in_flight.items() if f.deadline is not None and now >= f.deadline]
        for task_id in overdue:
            timeout = self.in_flight[task_id].queued.timeout or self.config.timeout
            self.on_overdue(task_id, self.in_flight[task_id].worker)
            self.lose([task_id], f"timed out after {timeout:g} s", retry=False)

    # --- workers -------------------------------------------------------------------------

    def worker_seen(self, identity: str, info: protocol.WorkerInfo, busy: int = 0) -> None:
        """A worker registered (or re-registered): its row is created or revived, in order
        with everything else the writer holds for it."""
        self.worker_dirty.pop(identity, None)
        self.writes.worker_seen(identity, mode=self.mode, hostname=info.hostname, pid=info.pid,
                                processes=info.processes, busy=busy, alive=True, draining=False,
                                last_heartbeat=time.time())
        self.publisher.worker(identity, mode=self.mode, processes=info.processes, busy=busy, alive=True,
                              hostname=info.hostname)

    def worker_state(self, identity: str, **state) -> None:
        """Heartbeat/busy/alive changes, handed to the writer at most once a second."""
        self.worker_dirty.setdefault(identity, {}).update(state)
        self.publisher.worker(identity, **state)

    def drain_worker(self, identity: str) -> None:
        """Default: nothing to drain; modes with remote workers override."""

    # --- writes --------------------------------------------------------------------------

    def flush(self, now: float, force: bool = False) -> None:
        """Hand worker changes to the database writer once a second, and updates to the
        dashboard; a forced flush waits until the database has everything."""
        if (self.worker_dirty or self.worker_done) and (force or now >= self.next_worker_flush):
            self.next_worker_flush = now + WORKER_FLUSH_INTERVAL
            for identity in self.worker_dirty.keys() | self.worker_done.keys():
                self.writes.worker_state(identity, self.worker_done.get(identity, 0),
                                         **self.worker_dirty.get(identity, {}))
            self.worker_dirty.clear()
            self.worker_done.clear()
        if force:
            self.writes.flush()
        self.publisher.flush(now, force=force)

    # --- hooks for modes -----------------------------------------------------------------

    def setup(self) -> None:
        """Open sockets or start the pool."""

    def teardown(self) -> None:
        """Close sockets or stop the pool."""

    def capacity(self) -> int:
        """Free places to run a task right now."""
        raise NotImplementedError

    def send(self, tasks: list[protocol.Task]) -> dict[str, str]:
        """Hand tasks to workers; return task_id -> identity of the worker holding each."""
        raise NotImplementedError

    def poll_items(self) -> list:
        """Sockets and file descriptors to wait on."""
        return []

    def on_ready(self, ready: set, now: float) -> None:
        """Read the ready items; call accept_results(), lose(), worker_seen()."""

    def tick(self, now: float) -> None:
        """Periodic work: heartbeats, worker expiry."""

    def next_tick(self, now: float) -> float:
        return now + 1.0

    def cancel_running(self, task_id: str, identity: str | None) -> None:
        """Stop the process running a cancelled task."""

    def on_overdue(self, task_id: str, identity: str | None) -> None:
        """A task passed the dispatcher's backstop deadline; modes may stop its process."""

    def adopt(self, task_id: str) -> str | None:
        """A task taken over from a dead dispatcher: the identity of a worker that reports
        running it (it becomes ours), or None when no worker has it."""
        return None


def _by_attempt(task_ids: list[str], in_flight: dict[str, InFlight]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for task_id in task_ids:
        flight = in_flight.get(task_id)
        groups.setdefault(flight.queued.attempt if flight else 1, []).append(task_id)
    return groups
