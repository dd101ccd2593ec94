"""`TaskStore`: every Redis command the platform issues, grouped by who calls it.

Web: functions, submit, read, cancel, long-poll. Dispatcher: claim and store in one round
trip, reclaim, re-queue, repair from the database, liveness. Console: depth, throughput, purge.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Iterator

import redis

from functions.taskstore import keys, metrics
from functions.taskstore.keys import (
    CONTROL_CHANNEL,
    DISPATCHER_TTL,
    GROUP,
    PURGE_BATCH,
    STREAM,
    THROUGHPUT_KEY,
    THROUGHPUT_WINDOW,
    WAKE_CHANNEL,
    done_channel,
    task_key,
)
from functions.taskstore.records import Claim, Claimed, QueueDepth, QueuedTask, parse_done
from functions.taskstore.scripts import SHAS, SOURCES
from workers.protocol import FINAL_STATUSES, Result

log = logging.getLogger(__name__)

RECLAIM_PAGE = 1000  # entries of a dead dispatcher taken over per call
OWN_PENDING_PAGE = 10_000


class ScriptsMissing(redis.ConnectionError):
    """Redis answered NOSCRIPT: its script cache was flushed under a live connection. Taken
    as an outage (callers retry, the web answers 503); the connections are dropped, so the
    next ones load the scripts again."""


class StreamMissing(redis.ResponseError):
    """The stream or its consumer group is gone: Redis restarted without its data."""


def _load_scripts(connection) -> None:
    """Run on every new connection: load the scripts, so pipelines can call them by hash
    (redis-py would otherwise ask SCRIPT EXISTS before every pipeline holding a script)."""
    connection.on_connect_check_health(check_health=False)
    for source in SOURCES.values():
        connection.send_command("SCRIPT", "LOAD", source, check_health=False)
    for _ in SOURCES:
        connection.read_response()


@functools.lru_cache(maxsize=8)
def store_for(url: str) -> TaskStore:
    """One store (one connection pool) per process and URL, made on first use."""
    return TaskStore.connect(url, health_check_interval=30)


def _final_fields(r: Result) -> list:
    fields = []
    if r.started_at is not None:
        fields += ["started_at", repr(r.started_at)]
    if r.finished_at is not None:
        fields += ["finished_at", repr(r.finished_at)]
    if r.output:
        fields += ["output", r.output]
    return fields


class TaskStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    @classmethod
    def connect(cls, url: str, **options) -> TaskStore:
        return cls(redis.Redis.from_url(url, socket_keepalive=True, redis_connect_func=_load_scripts, **options))

    # --- plumbing ---------------------------------------------------------------------

    def _script(self, target, name: str, keys_: list, args: list):
        """EVALSHA a platform script: into a pipeline by hash alone; a direct call loads the
        script on NOSCRIPT and retries."""
        sha = SHAS[name]
        if isinstance(target, redis.client.Pipeline):
            return target.evalsha(sha, len(keys_), *keys_, *args)
        try:
            return target.evalsha(sha, len(keys_), *keys_, *args)
        except redis.exceptions.NoScriptError:
            target.script_load(SOURCES[name])
            return target.evalsha(sha, len(keys_), *keys_, *args)

    def _execute(self, pipe, raise_on_error: bool = True) -> list:
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            pipe.connection_pool.disconnect()
            raise ScriptsMissing("Redis has lost the platform's Lua scripts (SCRIPT FLUSH?); reconnecting")
        if raise_on_error and (error := next((r for r in replies if isinstance(r, Exception)), None)):
            if "NOGROUP" in str(error):
                raise StreamMissing(str(error))
            raise error
        return replies

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def server_id(self) -> str:
        """Changes whenever Redis restarts (and on a failover to another server)."""
        return str(self.redis.info("server").get("run_id", ""))

    def eviction_policy(self) -> tuple[int, str]:
        """(maxmemory, maxmemory-policy), for the start-up check that the queue cannot be evicted."""
        info = self.redis.info("memory")
        return int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", ""))

    def close(self) -> None:
        self.redis.close()

    # --- functions --------------------------------------------------------------------

    def put_function(self, function_id, owner_id: str, payload: bytes) -> None:
        self.redis.hset(keys.function_key(function_id), mapping={"payload": payload, "owner": owner_id or ""})

    def drop_function(self, function_id) -> None:
        """Forget a deleted function's cached payload, so no dispatcher runs it again."""
        self.redis.delete(keys.function_key(function_id))

    def function_payloads(self, function_ids: list[str]) -> dict[str, bytes]:
        pipe = self.redis.pipeline(transaction=False)
        for fid in function_ids:
            pipe.hget(keys.function_key(fid), "payload")
        return {fid: data for fid, data in zip(function_ids, pipe.execute()) if data is not None}

    # --- the web side -----------------------------------------------------------------

    def enqueue(self, tasks: list[QueuedTask], received_at: float | None = None, *,
                only_missing: bool = False, not_before: float | None = None) -> list[int]:
        """Queue tasks (each one's hash and stream entry, then one wake-up) in one atomic
        script call; returns the 1-based positions queued. `only_missing` skips tasks Redis
        still has (re-queueing from the database after Redis lost data). With `not_before`
        (unix time) in the future they wait in the delayed set instead (countdown, eta)."""
        if not tasks:
            return []
        now = time.time()
        if not_before is not None and not_before > now and not only_missing:
            args = [repr(received_at or now), repr(now), repr(not_before)]
            for t in tasks:
                args += t.fields().values()
            self._script(self.redis, "enqueue_delayed", [keys.DELAYED_KEY, *(task_key(t.task_id) for t in tasks)],
                         args)
            return list(range(1, len(tasks) + 1))
        args = [WAKE_CHANNEL, repr(received_at or now), repr(now), "1" if only_missing else "0"]
        for t in tasks:
            args += t.fields().values()
        return self._script(self.redis, "enqueue", [STREAM, *(task_key(t.task_id) for t in tasks)], args)

    def read(self, task_id) -> dict[str, bytes] | None:
        data = self.redis.hgetall(task_key(task_id))
        return {k.decode(): v for k, v in data.items()} or None

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        """Each task's status (None where Redis has no record), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(task_key(task_id), "status")
        return [s.decode() if s is not None else None for s in pipe.execute()]

    def fields(self, task_ids: list[str], names: tuple[str, ...], chunk: int = 2000) -> list[list[bytes | None]]:
        """Chosen fields of each task's record (the benchmark reads timestamps), in pipelined chunks."""
        rows = []
        for start in range(0, len(task_ids), chunk):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids[start:start + chunk]:
                pipe.hmget(task_key(task_id), names)
            rows += pipe.execute()
        return rows

    def finish(self, results: list[Result], ttl: int, only_if: str = "") -> list[bool]:
        """Final states, first one wins (with `only_if`, only from that status); one round
        trip. True for each that applied."""
        if not results:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for r in results:
            self._finish(pipe, r, ttl, only_if)
        return [bool(x) for x in self._execute(pipe)]

    def _finish(self, pipe, r: Result, ttl: int, only_if: str = "", stored_at: str | None = None) -> None:
        extra = _final_fields(r) + (["stored_at", stored_at] if stored_at else [])
        self._script(pipe, "finish", [task_key(r.task_id), done_channel(r.task_id)],
                     [r.status, r.result, r.error, ttl, only_if, *extra])

    def progress(self, reports: dict[str, tuple[float, str]]) -> None:
        """Running tasks' progress (fraction, message), in one round trip; ignored for a task
        that is no longer RUNNING."""
        if not reports:
            return
        pipe = self.redis.pipeline(transaction=False)
        for task_id, (fraction, message) in reports.items():
            self._script(pipe, "progress", [task_key(task_id)], [repr(fraction), message])
        self._execute(pipe)

    def promote_due(self, now: float, limit: int = 500) -> int:
        """Move delayed tasks whose time (unix `now`) has come onto the queue; returns how many."""
        return int(self._script(self.redis, "promote", [keys.DELAYED_KEY, STREAM],
                                [repr(now), limit, task_key(""), WAKE_CHANNEL]))

    def forget_tasks(self, task_ids: list[str]) -> None:
        """Drop the records of tasks whose rows were purged (most have expired already)."""
        if task_ids:
            self.redis.delete(*(task_key(t) for t in task_ids))

    def try_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take a lock for `ttl` seconds unless someone holds it: one dispatcher at a time
        does a periodic job (the retention sweep)."""
        return bool(self.redis.set(keys.LOCK_KEY.format(name=name), holder, nx=True, px=int(ttl * 1000)))

    def done_listener(self) -> DoneListener:
        return DoneListener(self.redis.pubsub(ignore_subscribe_messages=True))

    # --- the dispatcher ---------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing; idempotent."""
        try:
            self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def exchange(self, finished: list[Result], ttl: int, consumer: str, count: int,
                 dispatched_at: float) -> tuple[list[bool], list[Claimed]]:
        """The hot path, one round trip: store `finished` (first final state wins; their
        entries stay pending until the database has them, see `forget`) and claim up to
        `count` new entries (QUEUED -> RUNNING). Returns which results won, and the claims."""
        pipe = self.redis.pipeline(transaction=False)
        stored_at = repr(time.time())
        for r in finished:
            self._finish(pipe, r, ttl, stored_at=stored_at)
        if finished:
            pipe.hincrby(THROUGHPUT_KEY, str(int(time.time())), len(finished))
        if count > 0:
            self._script(pipe, "claim", [STREAM], [GROUP, consumer, count, repr(dispatched_at), keys.TASK_KEY.format(
                task_id="")])
        replies = self._execute(pipe)
        won = [bool(x) for x in replies[: len(finished)]]
        claimed = []
        if count > 0:
            for entry_id, flat, code in replies[-1]:
                claimed.append(Claimed(entry_id, _parse_entry(flat), Claim(code)))
        return won, claimed

    def start(self, entries: list[tuple[bytes, dict]], consumer: str, dispatched_at: float) -> list[Claimed]:
        """Entries taken over (from a dead dispatcher, or our own after an outage): QUEUED
        ones start; the answer says which were final, running or forged."""
        parsed = [(entry_id, _parse_fields(fields)) for entry_id, fields in entries]
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, q in parsed:
            if q is not None:
                self._script(pipe, "start", [task_key(q.task_id)], [entry_id, consumer, repr(dispatched_at), q.attempt])
        codes = iter(self._execute(pipe))
        return [Claimed(entry_id, q, Claim(next(codes)) if q is not None else Claim.FORGED) for entry_id, q in parsed]

    def requeue(self, items: list[tuple[bytes | None, QueuedTask]],
                not_before: dict[str, float] | None = None) -> list[bool]:
        """Put tasks back on the queue as new entries, unless final (a task cancelled while
        it ran stays cancelled); the old entries are forgotten either way. A task named in
        `not_before` (unix time) waits in the delayed set until then (a retry's back-off)."""
        if not items:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, q in items:
            if (not_before or {}).get(q.task_id):
                self._script(pipe, "requeue_later", [STREAM, task_key(q.task_id), keys.DELAYED_KEY],
                             [GROUP, entry_id or "", repr(not_before[q.task_id]), *q.fields().values()])
                continue
            self._script(pipe, "requeue", [STREAM, task_key(q.task_id)],
                         [GROUP, entry_id or "", WAKE_CHANNEL, *q.fields().values()])
        return [bool(x) for x in self._execute(pipe)]

    def forget(self, entry_ids: list[bytes]) -> None:
        """Acknowledge and delete entries whose tasks are settled (their final state is in
        the database, or they were re-queued or refused), so the stream holds only live work."""
        if entry_ids:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(STREAM, GROUP, *entry_ids)
            pipe.xdel(STREAM, *entry_ids)
            pipe.execute()

    def repair(self, results: list[tuple[Result, dict]], ttl: int) -> list[bool]:
        """Write the database's final states over Redis (which lost or rolled back data);
        each with the record fields (owner, function_id) a lost hash needs. True where
        Redis said something else."""
        if not results:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for r, fields in results:
            extra = _final_fields(r) + [x for kv in fields.items() for x in kv]
            self._script(pipe, "repair", [task_key(r.task_id), done_channel(r.task_id)],
                         [r.status, r.result, r.error, ttl, *extra])
        return [bool(x) for x in self._execute(pipe)]

    def stream_entries(self, page: int = 1000) -> Iterator[list[tuple[bytes, str]]]:
        """Every entry on the stream, as pages of (entry id, task id): live work only."""
        start = "-"
        while batch := self.redis.xrange(STREAM, min=start, count=page):
            yield [(entry_id, fields.get(b"task_id", b"").decode()) for entry_id, fields in batch]
            if len(batch) < page:
                return
            start = b"(" + batch[-1][0]

    def refresh_liveness(self, consumer: str, mode: str) -> None:
        self.redis.set(keys.dispatcher_key(consumer), mode, ex=DISPATCHER_TTL)

    def live_dispatchers(self, names: Iterable[str]) -> set[str]:
        names = sorted(set(names))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.dispatcher_key(name))
        return {name for name, alive in zip(names, pipe.execute()) if alive}

    def live_dispatcher_names(self) -> list[str]:
        """Every dispatcher whose liveness key has not expired, by name (for /readyz and /metrics)."""
        prefix = keys.dispatcher_key("")
        return sorted(key.decode()[len(prefix):] for key in self.redis.scan_iter(match=prefix + "*", count=100))

    def any_dispatcher_alive(self) -> bool:
        return next(self.redis.scan_iter(match=keys.dispatcher_key("*"), count=100), None) is not None

    def leave(self, consumer: str) -> None:
        """A clean stop: our liveness key goes, and our consumer too unless it still holds entries."""
        self.redis.delete(keys.dispatcher_key(consumer))
        if not self.redis.xpending_range(STREAM, GROUP, "-", "+", 1, consumername=consumer):
            self.redis.xgroup_delconsumer(STREAM, GROUP, consumer)

    def reclaim_from_dead(self, consumer: str) -> list[tuple[str, list[tuple[bytes, dict]]]]:
        """Take over the entries of dispatchers whose liveness key expired: (dead name, entries)."""
        taken = []
        for info in self.redis.xinfo_consumers(STREAM, GROUP):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == consumer or self.redis.exists(keys.dispatcher_key(name)):
                continue
            pending = self.redis.xpending_range(STREAM, GROUP, "-", "+", RECLAIM_PAGE, consumername=name)
            if not pending:
                self.redis.xgroup_delconsumer(STREAM, GROUP, name)
                continue
            ids = [p["message_id"] for p in pending]
            entries = self.redis.xclaim(STREAM, GROUP, consumer, 0, ids)
            deleted = [entry_id for entry_id, fields in entries if not fields]
            self.forget(deleted)  # entries deleted from the stream while pending
            taken.append((name, [(entry_id, fields) for entry_id, fields in entries if fields]))
        return taken

    def own_pending(self, consumer: str) -> list[tuple[bytes, dict]]:
        """Entries delivered to `consumer` and not yet acknowledged."""
        response = self.redis.xreadgroup(GROUP, consumer, {STREAM: "0"}, count=OWN_PENDING_PAGE)
        return [(entry_id, fields) for entry_id, fields in (response[0][1] if response else []) if fields]

    def listen(self) -> ControlListener:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(WAKE_CHANNEL, CONTROL_CHANNEL)
        return ControlListener(pubsub)

    def send_control(self, command: str, **fields) -> int:
        """Tell every running dispatcher to act (cancel a task, drain a worker); returns listeners reached."""
        return self.redis.publish(CONTROL_CHANNEL, json.dumps({"command": command, **fields}))

    # --- metrics (/metrics) -------------------------------------------------------------

    def add_metrics(self, counts: dict[str, float], lags: dict[str, float] | None = None) -> None:
        """Add to the platform's counters (field -> amount) and set dispatchers' loop lags,
        in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name, amount in counts.items():
            if name.endswith("_sum"):  # a float: HINCRBY would refuse the field once it holds a fraction
                pipe.hincrbyfloat(metrics.COUNTERS_KEY, name, amount)
            else:
                pipe.hincrby(metrics.COUNTERS_KEY, name, int(amount))
        for consumer, lag in (lags or {}).items():
            pipe.set(metrics.lag_key(consumer), repr(lag), ex=metrics.LAG_TTL)
        pipe.execute()

    def metrics(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(metrics.COUNTERS_KEY).items()}

    def metric_lags(self) -> dict[str, float]:
        """Loop lag of each dispatcher that reported in the last few seconds."""
        prefix = metrics.lag_key("")
        names = [key.decode() for key in self.redis.scan_iter(match=prefix + "*", count=100)]
        values = self.redis.mget(names) if names else []
        return {name[len(prefix):]: float(v) for name, v in zip(names, values) if v is not None}

    # --- the console ------------------------------------------------------------------

    def queue_depth(self) -> QueueDepth:
        """Two O(1) calls (XLEN, XPENDING summary); a missing stream or group counts as empty."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(STREAM)
        pipe.xpending(STREAM, GROUP)
        length, pending = pipe.execute(raise_on_error=False)
        pending = pending["pending"] if isinstance(pending, dict) else 0
        return QueueDepth(length if isinstance(length, int) else 0, pending)

    def throughput(self, now: float | None = None, window: int = THROUGHPUT_WINDOW) -> list[tuple[int, int]]:
        """(unix second, tasks finished) for the last `window` seconds, oldest first, zeros filled."""
        now = int(time.time() if now is None else now)
        counts = {int(k): int(v) for k, v in self.redis.hgetall(THROUGHPUT_KEY).items()}
        return [(sec, counts.get(sec, 0)) for sec in range(now - window + 1, now + 1)]

    def throughput_tail(self, seconds: int, now: float | None = None) -> list[tuple[int, int]]:
        """Like `throughput` for only the last few seconds: one HMGET, for frequent updates."""
        now = int(time.time() if now is None else now)
        secs = list(range(now - seconds + 1, now + 1))
        values = self.redis.hmget(THROUGHPUT_KEY, [str(s) for s in secs])
        return [(sec, int(v or 0)) for sec, v in zip(secs, values)]

    def trim_throughput(self, now: float | None = None) -> None:
        cutoff = int(time.time() if now is None else now) - THROUGHPUT_WINDOW
        old = [k for k in self.redis.hkeys(THROUGHPUT_KEY) if int(k) < cutoff]
        if old:
            self.redis.hdel(THROUGHPUT_KEY, *old)

    def purge_queued(self, result: bytes, error: str, ttl: int, finished_at: float) -> list[str]:
        """FAIL every task still waiting in the stream and remove its entry; returns their ids.
        Walks the stream up to the entry that was last when the purge began, in batches, so a
        purge of 100,000 entries never blocks Redis for long."""
        last = self.redis.xrevrange(STREAM, count=1)
        if not last:
            return []
        end, start, purged = last[0][0], "-", []
        while True:
            batch = self.redis.xrange(STREAM, min=start, max=end, count=PURGE_BATCH)
            if not batch:
                return purged
            ids = [fields[b"task_id"].decode() for _, fields in batch]
            args = [result, error, ttl, repr(finished_at)]
            for (entry_id, _), task_id in zip(batch, ids):
                args += [entry_id, done_channel(task_id)]
            hits = self._script(self.redis, "purge", [STREAM, *(task_key(t) for t in ids)], args)
            purged += [ids[i - 1] for i in hits]
            if len(batch) < PURGE_BATCH:
                return purged
            start = b"(" + batch[-1][0]


def _parse_entry(flat: list) -> QueuedTask | None:
    return _parse_fields(dict(zip(flat[::2], flat[1::2])))


def _parse_fields(fields: dict) -> QueuedTask | None:
    try:
        return QueuedTask.from_fields(fields)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class ControlListener:
    """A dispatcher's subscription to wake-ups and operator commands."""

    def __init__(self, pubsub):
        self.pubsub = pubsub

    def socket(self):
        """The subscription's socket, so the dispatcher's poller wakes on it (redis-py keeps no
        public handle on it)."""
        return getattr(getattr(self.pubsub, "connection", None), "_sock", None)

    def messages(self) -> Iterator[tuple[str, dict | None]]:
        """("wake", None) and ("control", command) for what has arrived, without waiting."""
        while (message := self.pubsub.get_message(timeout=0.0)) is not None:
            if message["channel"] == WAKE_CHANNEL.encode():
                yield "wake", None
                continue
            try:
                command = json.loads(message["data"])
            except (ValueError, TypeError):
                log.warning("ignored malformed control message %r", message["data"][:200])
                continue
            if isinstance(command, dict):
                yield "control", command

    def close(self) -> None:
        self.pubsub.close()


class DoneListener:
    """A long-poll's subscription to done messages, kept between polls by a server thread."""

    def __init__(self, pubsub):
        self.pubsub = pubsub

    def watch(self, task_ids: Iterable[str]) -> None:
        self.pubsub.subscribe(*(done_channel(t) for t in task_ids))

    def watch_all(self) -> None:
        """Every task's done messages (the benchmark's completion watcher)."""
        self.pubsub.psubscribe(done_channel("*"))

    def unwatch(self, task_ids: Iterable[str]) -> None:
        self.pubsub.unsubscribe(*(done_channel(t) for t in task_ids))

    def next(self, timeout: float) -> tuple[str, Result | None] | None:
        """The next done message within `timeout`: (task id, its final state, or None when the
        message names only the status and the task must be read); None if none came."""
        message = self.pubsub.get_message(timeout=timeout)
        if message is None or message.get("type") not in ("message", "pmessage"):  # pmessage: watch_all
            return None
        channel = message["channel"].decode()
        task_id = channel[len(done_channel("")):]
        return task_id, parse_done(task_id, message["data"])

    def close(self) -> None:
        self.pubsub.close()


def is_final(status: str | bytes | None) -> bool:
    if isinstance(status, bytes):
        status = status.decode()
    return status in FINAL_STATUSES
