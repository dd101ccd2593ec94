"""The dispatcher core every mode shares: claim tasks from the Redis stream, hand them to
a mode, record results, fail or retry lost tasks, write the database in batches.

A mode subclasses `Dispatcher` and fills in the hooks (`setup`, `capacity`, `send`,
`poll_items`, `on_ready`, `tick`, `cancel_running`, `teardown`). `loop(now)` is one
iteration, so tests drive it step by step with a fake clock (STYLE C2).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import Counter

import redis
import zmq

from dispatch.batch import from_timestamp
from dispatch.config import DispatcherConfig
from dispatch.recovery import RECLAIM_INTERVAL, Recovery
from dispatch.state import FunctionCache, InFlight
from dispatch.writer import DatabaseWriter
from functions import mirror, services
from functions.dashboard import DashboardPublisher
from workers import protocol, serialization
from workers.exceptions import FunctionFailedException, WorkerFailureException
from workers.protocol import TaskStatus

log = logging.getLogger(__name__)

WORKER_FLUSH_INTERVAL = 1.0  # seconds between writes of worker heartbeats to the database


class Dispatcher(Recovery):
    mode = "base"

    def __init__(self, config: DispatcherConfig, clock=time.monotonic):
        self.config = config
        self.clock = clock
        self.in_flight: dict[str, InFlight] = {}
        self.unstored: list[tuple[InFlight | None, protocol.Result]] = []  # results Redis has not taken yet
        self.functions = FunctionCache()
        self.writes = DatabaseWriter(config.flush_interval, clock)
        self.worker_ids: dict[str, int] = {}  # identity -> Worker row id
        self.worker_dirty: dict[str, dict] = {}
        self.worker_done: Counter[str] = Counter()  # tasks finished per worker since the last write
        self.stopping = False  # first signal: drain
        self.stopped = False  # second signal, or drained: leave the loop
        self.backlog = True  # the stream may hold entries we have not claimed
        self.next_claim_check = 0.0
        self.next_worker_flush = 0.0
        self.next_reclaim = 0.0
        self.redis: redis.Redis | None = None
        self.pubsub = None
        self.publisher = DashboardPublisher()

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
                    self.wait_for_redis(exc)
        finally:
            self.shutdown()

    def initialize(self) -> None:
        self.redis = mirror.connect(self.config.redis_url)
        mirror.ensure_group(self.redis)
        self.requeue_lost_tasks()
        self.subscribe()
        self.refresh_liveness()
        self.writes.start()
        self.setup()
        log.info("%s dispatcher %s ready (redis %s)", self.mode, self.config.consumer, self.config.redis_url)

    def subscribe(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(mirror.WAKE_CHANNEL, mirror.CONTROL_CHANNEL)

    def shutdown(self) -> None:
        """Fail what is still held (a cold stop), flush, and close everything."""
        try:
            if self.in_flight:
                self.lose(list(self.in_flight), "dispatcher stopped before the task finished", retry=True)
            self.store_pending()
        except redis.RedisError as exc:
            log.error("Redis is unavailable at shutdown (%s): %d result(s) could not be recorded; "
                      "their tasks are reclaimed by the next dispatcher", exc, len(self.unstored))
        try:
            self.teardown()
        finally:
            self.flush(self.clock(), force=True)
            self.writes.close()
            self.leave_group()
            log.info("%s dispatcher %s stopped", self.mode, self.config.consumer)

    def leave_group(self) -> None:
        try:
            self.redis.delete(mirror.dispatcher_key(self.config.consumer))
            if not self.redis.xpending_range(mirror.STREAM, mirror.GROUP, "-", "+", 1,
                                             consumername=self.config.consumer):
                self.redis.xgroup_delconsumer(mirror.STREAM, mirror.GROUP, self.config.consumer)
        except redis.RedisError as exc:
            log.warning("could not leave the consumer group: %s", exc)
        finally:
            self.pubsub.close()
            self.redis.close()

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
        if self.stopping and not self.in_flight and not self.unstored:
            self.stopped = True
            return
        self.sync(now)
        ready = self.wait(self.poll_timeout(now))
        now = self.clock()
        if ready:
            self.on_ready(ready, now)
            if self.unstored:  # results first: before heartbeats, deadlines and the database flush
                self.sync(now)
        self.tick(now)
        self.expire_deadlines(now)
        if now >= self.next_reclaim:
            self.next_reclaim = now + RECLAIM_INTERVAL
            self.refresh_liveness()
            self.reclaim_from_dead_dispatchers()
            mirror.trim_throughput(self.redis)
        self.flush(now)

    def poll_timeout(self, now: float) -> float:
        """How long to wait for worker events before the next piece of periodic work."""
        wake_at = min(now + self.config.idle_poll, self.next_tick(now), self.publisher.next_due(now),
                      self.next_worker_flush if self.worker_dirty or self.worker_done else now + 1.0)
        if self.unstored or (self.capacity() > 0 and self.backlog and not self.stopping):
            return 0.0
        return max(0.0, wake_at - now)

    def wait(self, timeout: float) -> set:
        poller = zmq.Poller()
        items = self.poll_items()
        for item in items:
            poller.register(item, zmq.POLLIN)
        sock = getattr(getattr(self.pubsub, "connection", None), "_sock", None)
        if sock is not None:  # wake on pub/sub too (redis-py keeps no public handle on it)
            poller.register(sock, zmq.POLLIN)
        events = dict(poller.poll(int(timeout * 1000)))
        return {item for item in items if item in events}

    # --- the queue -----------------------------------------------------------------------

    def read_control(self) -> None:
        """Handle wake-ups and operator commands that arrived on the pub/sub connection."""
        while True:
            message = self.pubsub.get_message(timeout=0.0)
            if message is None:
                return
            if message["channel"] == mirror.WAKE_CHANNEL.encode():
                self.backlog = True
                continue
            try:
                command = json.loads(message["data"])
            except (ValueError, TypeError):
                log.warning("ignored malformed control message %r", message["data"][:200])
                continue
            self.on_control(command)

    def on_control(self, command: dict) -> None:
        if command.get("command") == "cancel":
            flight = self.in_flight.get(command.get("task_id", ""))
            if flight is not None:
                self.cancel_running(flight.queued.task_id, flight.worker)
        elif command.get("command") == "drain":
            self.drain_worker(command.get("identity", ""))

    def sync(self, now: float) -> None:
        """Store finished results and claim as many queued tasks as there are free places to
        run them, in one Redis round trip."""
        free = 0 if self.stopping else self.capacity()
        claiming = free > 0 and (self.backlog or now >= self.next_claim_check)
        if not claiming:
            self.store_pending()
            return
        self.next_claim_check = now + self.config.idle_poll
        finished, self.unstored = self.unstored, []
        pipe = self.redis.pipeline(transaction=False)
        self.queue_store(pipe, finished)
        wall = time.time()
        mirror.claim(pipe, self.config.consumer, free, wall)
        try:
            replies = mirror.execute(pipe)
        except (redis.ConnectionError, redis.TimeoutError):
            self.unstored = finished + self.unstored  # nothing is lost: retried once Redis is back
            raise
        self.after_store(finished, replies)
        claimed = replies[-1]
        if isinstance(claimed, redis.ResponseError):
            if "NOGROUP" not in str(claimed):
                raise claimed
            log.warning("the task stream vanished (Redis restarted without its data?); recreating it")
            mirror.ensure_group(self.redis)
            self.requeue_lost_tasks()
            return
        self.backlog = len(claimed) >= free
        if claimed:
            self.admit([(entry_id, mirror.entry_fields(flat), ok) for entry_id, flat, ok in claimed], now, wall)

    def start(self, entries: list, now: float) -> None:
        """Mark reclaimed entries RUNNING (unless already final), then hand them out."""
        pipe = self.redis.pipeline(transaction=False)
        wall = time.time()
        for _, fields in entries:
            q = mirror.parse_stream_fields(fields)
            mirror.start(pipe, q.task_id, dispatched_at=repr(wall), attempts=q.attempt)
        started = mirror.execute(pipe, raise_on_error=True)
        self.admit([(entry_id, fields, ok) for (entry_id, fields), ok in zip(entries, started)], now, wall)

    def admit(self, claimed: list, now: float, wall: float) -> None:
        """Hold claimed entries and hand them to the mode; ones already final (cancelled
        while queued) are acknowledged and never run."""
        queued = [(entry_id, mirror.parse_stream_fields(fields), ok) for entry_id, fields, ok in claimed]
        payloads = self.function_payloads({q.function_id for _, q, ok in queued if ok})
        tasks, dropped = [], []
        for entry_id, q, ok in queued:
            if not ok:
                dropped.append(entry_id)
                continue
            timeout = q.timeout if q.timeout is not None else self.config.timeout
            self.in_flight[q.task_id] = InFlight(q, entry_id, deadline=None if timeout is None
                                                 else now + timeout + self.config.deadline_grace)
            function = payloads.get(q.function_id)
            if function is None:
                self.fail([q.task_id], FunctionFailedException(f"function {q.function_id} no longer exists"))
                continue
            tasks.append(protocol.Task(q.task_id, q.function_id, function, q.arguments, timeout))
        if dropped:
            pipe = self.redis.pipeline(transaction=False)
            mirror.forget_entries(pipe, dropped)
            pipe.execute()
        if tasks:
            self.hand_out(tasks, wall)

    def hand_out(self, tasks: list[protocol.Task], wall: float) -> None:
        for task_id, identity in self.send(tasks).items():
            flight = self.in_flight.get(task_id)
            if flight is None:
                continue
            flight.worker = identity
            self.writes.mark_running(task_id, self.worker_ids.get(identity), flight.queued.attempt, wall)
            self.publisher.task(task_id, TaskStatus.RUNNING.value)

    def function_payloads(self, function_ids: set[str]) -> dict[str, bytes]:
        """Payloads from memory, then Redis, then (once per function) the database."""
        found = {fid: data for fid in function_ids if (data := self.functions.get(fid)) is not None}
        missing = sorted(function_ids - found.keys())
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for fid in missing:
                pipe.hget(mirror.function_key(fid), "payload")
            for fid, data in zip(missing, pipe.execute()):
                if data is not None:
                    found[fid] = data
            found.update(services.function_payloads([f for f in missing if f not in found]))
            for fid in missing:
                if fid in found:
                    self.functions.put(fid, found[fid])
        return found

    # --- outcomes ------------------------------------------------------------------------

    def complete(self, results: list[protocol.Result]) -> None:
        """Record results from a worker; the next sync stores them in the same round trip as
        the next claim. A result for a task this dispatcher does not hold (sent before a
        restart or reconnect) still counts unless the task is already final."""
        self.unstored.extend((self.in_flight.pop(r.task_id, None), r) for r in results)

    def fail(self, task_ids: list[str], exc: Exception) -> None:
        """FAIL held tasks with `exc`, recorded at once in one round trip (failures are rare,
        but a dead worker may take many tasks with it)."""
        result, error = serialization.dumps(exc), f"{type(exc).__name__}: {exc}"
        for task_id in task_ids:
            flight = self.in_flight.pop(task_id, None)
            if flight is not None:
                self.unstored.append((flight, protocol.Result(task_id, TaskStatus.FAILED.value, result, error,
                                                              None, time.time())))
        self.store_pending()

    def lose(self, task_ids: list[str], reason: str, retry: bool = True) -> None:
        """Tasks whose worker died, went silent or overran: re-queue while retries remain, else FAIL."""
        again = [t for t in task_ids
                 if retry and t in self.in_flight and self.in_flight[t].queued.attempt <= self.config.retries]
        if again:
            self.requeue(again, count_attempt=True)
            log.warning("re-queued %d task(s): %s", len(again), reason)
        self.fail(task_ids, WorkerFailureException(reason))

    def requeue(self, task_ids: list[str], count_attempt: bool) -> None:
        """Put held tasks back on the stream (as new entries) for any dispatcher to take."""
        pipe = self.redis.pipeline(transaction=True)
        for task_id in task_ids:
            flight = self.in_flight.pop(task_id, None)
            if flight is None:
                continue
            q = flight.queued
            attempt = q.attempt + 1 if count_attempt else q.attempt
            pipe.hset(mirror.task_key(q.task_id), mapping={"status": TaskStatus.QUEUED.value})
            pipe.xadd(mirror.STREAM, mirror.stream_fields(
                mirror.QueuedTask(q.task_id, q.function_id, q.owner_id, q.arguments, q.timeout, attempt)))
            mirror.forget_entries(pipe, [flight.entry_id])
        pipe.execute()
        self.backlog = True

    def store_pending(self) -> None:
        """Final states to Redis now (one pipeline), to the database at the next flush. The
        list is cleared only once Redis took it, so a Redis outage loses no result."""
        if not self.unstored:
            return
        pipe = self.redis.pipeline(transaction=False)
        self.queue_store(pipe, self.unstored)
        replies = mirror.execute(pipe)
        self.after_store(self.unstored, replies)
        self.unstored = []

    def queue_store(self, pipe, finished: list[tuple[InFlight | None, protocol.Result]]) -> None:
        """Add the commands that record `finished` to `pipe`: one reply per result first."""
        if not finished:
            return
        stored_at = repr(time.time())
        for _flight, r in finished:
            mirror.finish(pipe, r.task_id, r.status, r.result, r.error, self.config.result_ttl,
                          started_at=repr(r.started_at or 0.0), finished_at=repr(r.finished_at or 0.0),
                          stored_at=stored_at)
        mirror.forget_entries(pipe, [flight.entry_id for flight, _ in finished if flight is not None])
        pipe.hincrby(mirror.THROUGHPUT_KEY, str(int(time.time())), len(finished))

    def after_store(self, finished: list[tuple[InFlight | None, protocol.Result]], replies: list) -> None:
        """The winners (first final state for their task) go to the database and the dashboard."""
        for (flight, r), first in zip(finished, replies[: len(finished)]):
            if isinstance(first, Exception):
                raise first
            if not first:
                continue  # someone (a cancel) already gave this task its final state
            self.writes.finish(services.Outcome(
                r.task_id, r.status, r.result, r.error, from_timestamp(r.started_at), from_timestamp(r.finished_at),
                self.worker_ids.get(flight.worker) if flight else None, flight.queued.attempt if flight else 1))
            self.publisher.task(r.task_id, r.status)
            if flight is not None and flight.worker is not None:
                self.worker_done[flight.worker] += 1

    def expire_deadlines(self, now: float) -> None:
        """The dispatcher's backstop: a task far past its deadline is lost (a dead pull worker)."""
        overdue = [t for t, f in self.in_flight.items() if f.deadline is not None and now >= f.deadline]
        for task_id in overdue:
            timeout = self.in_flight[task_id].queued.timeout or self.config.timeout
            self.on_overdue(task_id, self.in_flight[task_id].worker)
            self.lose([task_id], f"timed out after {timeout:g} s")

    # --- workers -------------------------------------------------------------------------

    def worker_seen(self, identity: str, info: protocol.WorkerInfo, busy: int = 0) -> None:
        """A worker registered (or re-registered): make sure the database lists it."""
        self.worker_ids[identity] = services.worker_register(
            identity=identity, mode=self.mode, hostname=info.hostname, pid=info.pid, processes=info.processes)
        self.publisher.worker(identity, mode=self.mode, processes=info.processes, busy=busy, alive=True,
                              hostname=info.hostname)

    def worker_state(self, identity: str, **state) -> None:
        """Heartbeat/busy/alive changes, written at most once a second."""
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
            self.writes.workers({self.worker_ids[i]: s for i, s in self.worker_dirty.items() if i in self.worker_ids},
                                {self.worker_ids[i]: n for i, n in self.worker_done.items() if i in self.worker_ids})
            self.worker_dirty.clear()
            self.worker_done.clear()
        if force:
            self.writes.flush()
        if self.writes.links_broken.is_set():  # a Worker row we pointed at is gone
            self.writes.links_broken.clear()
            self.worker_ids.clear()
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
        """Read the ready items; call complete(), lose(), worker_seen()."""

    def tick(self, now: float) -> None:
        """Periodic work: heartbeats, worker expiry."""

    def next_tick(self, now: float) -> float:
        return now + 1.0

    def cancel_running(self, task_id: str, identity: str | None) -> None:
        """Stop the process running a cancelled task."""

    def on_overdue(self, task_id: str, identity: str | None) -> None:
        """A task passed the dispatcher's backstop deadline; modes may stop its process."""
