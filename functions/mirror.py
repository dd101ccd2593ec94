"""The Redis mirror: task hashes, the function payload cache, the task stream, and the
control channel. Every Redis name the platform uses is defined here.

The stream is read through a consumer group, so a task queued while no dispatcher runs,
or held by one that crashed, is not lost (DESIGN §3). State changes go through small Lua
scripts so each task reaches exactly one final state, whoever writes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass

import redis

from workers.protocol import TaskStatus

STREAM = "faas:tasks"
GROUP = "dispatchers"
TASK_KEY = "faas:task:{task_id}"
FUNCTION_KEY = "faas:function:{function_id}"
DONE_CHANNEL = "faas:done:{task_id}"  # published once when a task reaches a final state
CONTROL_CHANNEL = "faas:control"  # JSON commands to dispatchers: cancel a task, drain a worker
WAKE_CHANNEL = "faas:wake"  # published with every submit, so an idle dispatcher claims at once
DISPATCHER_KEY = "faas:dispatcher:{consumer}"  # expires when a dispatcher stops refreshing it
DISPATCHER_TTL = 6  # seconds; a dispatcher silent this long is dead and its entries are reclaimed
WORKER_KEY = "faas:worker:{identity}"  # a live worker's last known state, for the dashboard
WORKERS_SET = "faas:workers"
THROUGHPUT_KEY = "faas:done-per-second"  # hash: unix second -> tasks finished, for the dashboard chart
THROUGHPUT_WINDOW = 600  # seconds of throughput history kept

FINAL = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)

DONE_INLINE_BYTES = 64 * 1024  # a done message carries result and error up to this size

# KEYS[1]=task hash, KEYS[2]=done channel; ARGV = status, result, error, ttl, required status
# ("" for any unfinished one), field, value, ...  The done message is the status, followed
# (when small) by the error and result, so a waiting long-poll need not read the hash back.
_FINISH = """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'COMPLETED' or s == 'FAILED' then return 0 end
if ARGV[5] ~= '' and s ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3])
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if #ARGV[2] + #ARGV[3] <= DONE_INLINE_BYTES then
  redis.call('PUBLISH', KEYS[2], ARGV[1] .. '\\n' .. #ARGV[3] .. '\\n' .. ARGV[3] .. ARGV[2])
else
  redis.call('PUBLISH', KEYS[2], ARGV[1])
end
return 1
""".replace("DONE_INLINE_BYTES", str(DONE_INLINE_BYTES))

# KEYS[1]=stream; ARGV = group, consumer, count, dispatched_at, task key prefix.
# Claims up to `count` entries and marks each task RUNNING unless it is already final (a
# cancelled task): one round trip instead of a read and then a write per task. It touches
# task hashes it cannot declare in KEYS, so it needs a single Redis (not Redis Cluster).
_CLAIM = """
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not res then return {} end
local out = {}
for i, entry in ipairs(res[1][2]) do
  local fields = entry[2]
  local task_id, attempt = nil, '1'
  for j = 1, #fields, 2 do
    if fields[j] == 'task_id' then task_id = fields[j + 1] end
    if fields[j] == 'attempt' then attempt = fields[j + 1] end
  end
  local ok = 0
  if task_id then
    local key = ARGV[5] .. task_id
    local s = redis.call('HGET', key, 'status')
    if s ~= 'COMPLETED' and s ~= 'FAILED' then
      redis.call('HSET', key, 'status', 'RUNNING', 'dispatched_at', ARGV[4], 'attempts', attempt)
      ok = 1
    end
  end
  out[i] = {entry[1], fields, ok}
end
return out
"""

# KEYS[1]=task hash; ARGV = field, value, ...  Only a QUEUED (or unknown) task may start.
_START = """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'COMPLETED' or s == 'FAILED' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', unpack(ARGV))
return 1
"""

# KEYS[1]=stream, KEYS[2..]=task hashes; ARGV = wake channel, received_at, queued_at,
# only_missing ('1': skip tasks whose hash Redis still has), then per task the stream fields
# (task_id, function_id, owner, arguments, timeout, attempt). Each task's hash and stream
# entry, and one wake-up for them all: atomic, one command. Returns the 1-based positions
# of the tasks it queued.
_ENQUEUE = """
local per, queued = 6, {}
for i = 2, #KEYS do
  local a = 4 + (i - 2) * per
  if ARGV[4] ~= '1' or redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'status', 'QUEUED', 'owner', ARGV[a + 3], 'function_id', ARGV[a + 2],
               'received_at', ARGV[2], 'queued_at', ARGV[3], 'attempts', ARGV[a + 6] - 1)
    redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[a + 1], 'function_id', ARGV[a + 2], 'owner', ARGV[a + 3],
               'arguments', ARGV[a + 4], 'timeout', ARGV[a + 5], 'attempt', ARGV[a + 6])
    queued[#queued + 1] = i - 1
  end
end
if #queued > 0 then redis.call('PUBLISH', ARGV[1], #queued) end
return queued
"""


@functools.lru_cache(maxsize=8)
def client(url: str) -> redis.Redis:
    """One connection pool per process and URL, made on first use (never at import)."""
    return connect(url, health_check_interval=30)


def connect(url: str, **options) -> redis.Redis:
    """A client whose every new connection loads the platform's Lua scripts first. Pipelines
    then call them by hash: redis-py would otherwise ask SCRIPT EXISTS before every
    pipeline that holds a script, a second round trip each time."""
    return redis.Redis.from_url(url, socket_keepalive=True, redis_connect_func=_load_scripts, **options)


def _load_scripts(connection) -> None:
    connection.on_connect_check_health(check_health=False)
    for source in _SCRIPTS.values():
        connection.send_command("SCRIPT", "LOAD", source, check_health=False)
    for _ in _SCRIPTS:
        connection.read_response()


class ScriptsMissing(redis.ConnectionError):
    """Redis answered NOSCRIPT: its script cache was flushed under a live connection. Taken
    as an outage (callers retry, the web answers 503); the connections are dropped, so the
    next ones load the scripts again."""


def run_script(pipe_or_client, name: str, keys: list, args: list):
    """EVALSHA one of the platform's scripts. Into a pipeline of a `connect()` client it goes
    by hash alone; a direct call loads the script on NOSCRIPT and retries."""
    sha = _SHAS[name]
    if isinstance(pipe_or_client, redis.client.Pipeline):
        if pipe_or_client.connection_pool.connection_kwargs.get("redis_connect_func") is not _load_scripts:
            pipe_or_client.scripts.add(pipe_or_client.register_script(_SCRIPTS[name]))  # redis-py checks first
        return pipe_or_client.evalsha(sha, len(keys), *keys, *args)
    try:
        return pipe_or_client.evalsha(sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        pipe_or_client.script_load(_SCRIPTS[name])
        return pipe_or_client.evalsha(sha, len(keys), *keys, *args)


def execute(pipe, raise_on_error: bool = False) -> list:
    """Run a pipeline holding platform scripts. A missing script raises ScriptsMissing
    (after dropping the pool's connections); other errors are raised, or returned in place."""
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
        pipe.connection_pool.disconnect()
        raise ScriptsMissing("Redis has lost the platform's Lua scripts (SCRIPT FLUSH?); reconnecting")
    if raise_on_error and (error := next((r for r in replies if isinstance(r, Exception)), None)):
        raise error
    return replies


def ensure_group(r: redis.Redis) -> None:
    """Create the stream and its consumer group if missing; idempotent."""
    try:
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def task_key(task_id) -> str:
    return TASK_KEY.format(task_id=task_id)


def function_key(function_id) -> str:
    return FUNCTION_KEY.format(function_id=function_id)


def done_channel(task_id) -> str:
    return DONE_CHANNEL.format(task_id=task_id)


@dataclass(frozen=True)
class Done:
    """A final state as its done message carries it."""

    status: str
    error: str
    result: bytes


def parse_done(data: bytes) -> Done | None:
    """The final state in a done message; None when it names only the status (a result too
    large to carry, or a purge), and the task's hash must be read."""
    status, newline, rest = data.partition(b"\n")
    length, newline2, rest = rest.partition(b"\n")
    if not (newline and newline2 and length.isdigit()):
        return None
    size = int(length)
    return Done(status.decode(), rest[:size].decode(errors="replace"), rest[size:])


@dataclass(frozen=True)
class QueuedTask:
    """What the web side puts on the queue for one task."""

    task_id: str
    function_id: str
    owner_id: str  # "" for anonymous
    arguments: bytes
    timeout: float | None = None
    attempt: int = 1


def put_function(pipe, function_id, owner_id, payload: bytes) -> None:
    pipe.hset(function_key(function_id), mapping={"payload": payload, "owner": owner_id or ""})


def enqueue(pipe_or_client, tasks: list[QueuedTask], received_at: float | None = None, *,
            only_missing: bool = False):
    """Queue tasks: each one's hash and stream entry, then one wake-up, in one atomic script
    call. `received_at` is when the request arrived; with queued_at it shows the web's share
    of latency. `only_missing` skips tasks Redis still has (re-queueing after data loss)."""
    if not tasks:
        return []
    now = time.time()
    args = [WAKE_CHANNEL, repr(received_at or now), repr(now), "1" if only_missing else "0"]
    for t in tasks:
        args += stream_fields(t).values()
    return run_script(pipe_or_client, "enqueue", [STREAM, *(task_key(t.task_id) for t in tasks)], args)


def missing_tasks(r: redis.Redis, task_ids: list[str]) -> list[str]:
    """The ids among `task_ids` whose hash Redis does not have, in one round trip."""
    pipe = r.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.exists(task_key(task_id))
    return [task_id for task_id, exists in zip(task_ids, pipe.execute()) if not exists]


def stream_fields(t: QueuedTask) -> dict:
    return {"task_id": t.task_id, "function_id": t.function_id, "owner": t.owner_id, "arguments": t.arguments,
            "timeout": "" if t.timeout is None else repr(t.timeout), "attempt": t.attempt}


def parse_stream_fields(fields: dict) -> QueuedTask:
    """Inverse of `stream_fields` for an entry read back from Redis (bytes keys and values)."""
    timeout = fields.get(b"timeout", b"")
    return QueuedTask(
        task_id=fields[b"task_id"].decode(), function_id=fields[b"function_id"].decode(),
        owner_id=fields.get(b"owner", b"").decode(), arguments=fields[b"arguments"],
        timeout=float(timeout) if timeout else None, attempt=int(fields.get(b"attempt", b"1")),
    )


def dispatcher_key(consumer: str) -> str:
    return DISPATCHER_KEY.format(consumer=consumer)


def worker_key(identity: str) -> str:
    return WORKER_KEY.format(identity=identity)


def forget_entries(pipe, entry_ids: list) -> None:
    """Acknowledge and delete stream entries whose tasks are settled (finished, re-queued
    as a new entry, or never to run), so the stream holds only live work."""
    if entry_ids:
        pipe.xack(STREAM, GROUP, *entry_ids)
        pipe.xdel(STREAM, *entry_ids)


def read_task(r: redis.Redis, task_id) -> dict[str, bytes] | None:
    data = r.hgetall(task_key(task_id))
    return {k.decode(): v for k, v in data.items()} or None


def claim(pipe, consumer: str, count: int, dispatched_at: float):
    """Queue a claim of up to `count` entries into `pipe`; its reply is a list of
    (entry id, flat field list, started 0/1)."""
    args = [GROUP, consumer, count, repr(dispatched_at), TASK_KEY.format(task_id="")]
    return run_script(pipe, "claim", [STREAM], args)


def entry_fields(flat: list) -> dict:
    """A claim reply's flat [k1, v1, k2, v2, ...] as the dict XREADGROUP gives."""
    return dict(zip(flat[::2], flat[1::2]))


def finish(pipe_or_client, task_id, status: str, result: bytes, error: str, ttl: int,
           only_if: str = "", **extra):
    """Set a final state unless the task already has one (or, with `only_if`, unless its
    status is something else); publishes on the done channel."""
    args = [status, result, error, ttl, only_if]
    for k, v in extra.items():
        args += [k, v]
    return run_script(pipe_or_client, "finish", [task_key(task_id), done_channel(task_id)], args)


def start(pipe_or_client, task_id, **fields):
    args = []
    for k, v in fields.items():
        args += [k, v]
    return run_script(pipe_or_client, "start", [task_key(task_id)], args or ["dispatched_at", repr(time.time())])


def send_control(r: redis.Redis, command: str, **fields) -> int:
    """Tell every running dispatcher to act (cancel a task, drain a worker); returns listeners reached."""
    return r.publish(CONTROL_CHANNEL, json.dumps({"command": command, **fields}))


def throughput(r: redis.Redis, now: float | None = None, window: int = THROUGHPUT_WINDOW) -> list[tuple[int, int]]:
    """(unix second, tasks finished) for the last `window` seconds, oldest first, zeros filled."""
    now = int(time.time() if now is None else now)
    counts = {int(k): int(v) for k, v in r.hgetall(THROUGHPUT_KEY).items()}
    return [(sec, counts.get(sec, 0)) for sec in range(now - window + 1, now + 1)]


def trim_throughput(r: redis.Redis, now: float | None = None) -> None:
    """Drop throughput buckets older than the window."""
    cutoff = int(time.time() if now is None else now) - THROUGHPUT_WINDOW
    old = [k for k in r.hkeys(THROUGHPUT_KEY) if int(k) < cutoff]
    if old:
        r.hdel(THROUGHPUT_KEY, *old)


# --- operations console: queue depth and purge ---------------------------------------------

PURGE_BATCH = 500  # stream entries examined per purge script call

# KEYS[1]=stream, KEYS[2..]=task hashes; ARGV = result, error, ttl, finished_at, then per task
# (entry id, done channel). A QUEUED (or unknown) task FAILS and its entry leaves the stream;
# an entry whose task is already final is dropped too; a RUNNING task is left alone.
_PURGE = """
local purged = {}
for i = 2, #KEYS do
  local entry, channel = ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]
  local s = redis.call('HGET', KEYS[i], 'status')
  if s == false or s == 'QUEUED' then
    redis.call('HSET', KEYS[i], 'status', 'FAILED', 'result', ARGV[1], 'error', ARGV[2], 'finished_at', ARGV[4])
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    redis.call('PUBLISH', channel, 'FAILED')
    redis.call('XDEL', KEYS[1], entry)
    purged[#purged + 1] = i - 1
  elseif s == 'COMPLETED' or s == 'FAILED' then
    redis.call('XDEL', KEYS[1], entry)
  end
end
return purged
"""


@dataclass(frozen=True)
class QueueDepth:
    """Stream entries not yet finished: `pending` are held by a dispatcher, the rest wait."""

    length: int
    pending: int

    @property
    def waiting(self) -> int:
        return max(0, self.length - self.pending)


def queue_depth(r: redis.Redis) -> QueueDepth:
    """Two O(1) calls (XLEN, XPENDING summary); a missing stream or group counts as empty."""
    pipe = r.pipeline(transaction=False)
    pipe.xlen(STREAM)
    pipe.xpending(STREAM, GROUP)
    length, pending = pipe.execute(raise_on_error=False)
    pending = pending["pending"] if isinstance(pending, dict) else 0
    return QueueDepth(length if isinstance(length, int) else 0, pending)


def task_statuses(r: redis.Redis, task_ids: list[str]) -> list[str | None]:
    """The mirror's status of each task (None where Redis has no hash), in one round trip."""
    pipe = r.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hget(task_key(task_id), "status")
    return [s.decode() if s is not None else None for s in pipe.execute()]


def throughput_tail(r: redis.Redis, seconds: int, now: float | None = None) -> list[tuple[int, int]]:
    """Like `throughput` for only the last few seconds: one HMGET, for frequent updates."""
    now = int(time.time() if now is None else now)
    secs = list(range(now - seconds + 1, now + 1))
    values = r.hmget(THROUGHPUT_KEY, [str(s) for s in secs])
    return [(sec, int(v or 0)) for sec, v in zip(secs, values)]


def purge_queued(r: redis.Redis, result: bytes, error: str, ttl: int, finished_at: float) -> list[str]:
    """FAIL every task still waiting in the stream and remove its entry; returns their ids.

    Walks the stream up to the entry that was last when the purge began, in batches, so a
    purge of 100,000 entries never blocks Redis for long. A dispatcher that claimed an entry
    in the meantime finds its task final and drops it (the start script refuses final tasks).
    """
    last = r.xrevrange(STREAM, count=1)
    if not last:
        return []
    end, start, purged = last[0][0], "-", []
    while True:
        batch = r.xrange(STREAM, min=start, max=end, count=PURGE_BATCH)
        if not batch:
            return purged
        ids = [fields[b"task_id"].decode() for _, fields in batch]
        args = [result, error, ttl, repr(finished_at)]
        for (entry_id, _), task_id in zip(batch, ids):
            args += [entry_id, done_channel(task_id)]
        hits = run_script(r, "purge", [STREAM, *(task_key(t) for t in ids)], args)
        purged += [ids[i - 1] for i in hits]
        if len(batch) < PURGE_BATCH:
            return purged
        start = b"(" + batch[-1][0]


_SCRIPTS = {"enqueue": _ENQUEUE, "start": _START, "finish": _FINISH, "claim": _CLAIM, "purge": _PURGE}
_SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}
