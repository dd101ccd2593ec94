"""`MemoryTaskStore`: the task store's in-memory twin, with the same contract.

It keeps the same records, stream, consumer group and transitions as the Redis store, in
dictionaries, so the dispatcher's rules run in tests without a server, and a state-machine
test checks the two against each other step by step. Single-threaded use only.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from functions.taskstore import metrics
from functions.taskstore.keys import DELAYED_ENTRY, DISPATCHER_TTL, DONE_INLINE_BYTES, THROUGHPUT_WINDOW
from functions.taskstore.records import Claim, Claimed, QueueDepth, QueuedTask, parse_done
from workers.protocol import FINAL_STATUSES, Result

FINAL = {s.encode() for s in FINAL_STATUSES}


def _b(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


class MemoryTaskStore:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.tasks: dict[str, dict[str, bytes]] = {}
        self.expiry: dict[str, float] = {}
        self.functions: dict[str, bytes] = {}
        self.stream: OrderedDict[bytes, dict[bytes, bytes]] = OrderedDict()
        self.next_id = 0
        self.last_delivered = b""
        self.group = False
        self.pending: dict[bytes, str] = {}  # entry id -> consumer
        self.consumers: set[str] = set()
        self.alive: dict[str, float] = {}  # consumer -> liveness expiry
        self.throughput_counts: dict[int, int] = {}
        self.listeners: list = []
        self.run_id = "memory-1"
        self.counters: dict[str, float] = {}
        self.lags: dict[str, tuple[float, float]] = {}  # consumer -> (lag, expiry)
        self.locks: dict[str, tuple[str, float]] = {}  # name -> (holder, expiry)
        self.delayed: dict[str, float] = {}  # task id -> unix time it may run

    # --- plumbing ---------------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def server_id(self) -> str:
        return self.run_id

    def eviction_policy(self) -> tuple[int, str]:
        return 0, "noeviction"

    def close(self) -> None:
        pass

    def _record(self, task_id) -> dict[str, bytes] | None:
        task_id = str(task_id)
        if task_id in self.expiry and self.clock() >= self.expiry[task_id]:
            self.tasks.pop(task_id, None)
            self.expiry.pop(task_id, None)
        return self.tasks.get(task_id)

    def _publish(self, channel: str, data: bytes) -> None:
        for listener in self.listeners:
            listener.deliver(channel, data)

    def _publish_done(self, task_id: str, status: bytes, result: bytes, error: bytes, quiet: bool = False) -> None:
        if not quiet and len(result) + len(error) <= DONE_INLINE_BYTES:
            data = status + b"\n" + str(len(error)).encode() + b"\n" + error + result
        else:
            data = status
        self._publish(f"done:{task_id}", data)

    def _add_entry(self, q: QueuedTask) -> bytes:
        self.next_id += 1
        entry_id = f"{self.next_id}-0".encode()
        self.stream[entry_id] = {_b(k): _b(v) for k, v in q.fields().items()}
        return entry_id

    # --- functions --------------------------------------------------------------------

    def put_function(self, function_id, owner_id: str, payload: bytes) -> None:
        self.functions[str(function_id)] = payload

    def drop_function(self, function_id) -> None:
        self.functions.pop(str(function_id), None)

    def function_payloads(self, function_ids: list[str]) -> dict[str, bytes]:
        return {f: self.functions[f] for f in function_ids if f in self.functions}

    # --- the web side -----------------------------------------------------------------

    def enqueue(self, tasks: list[QueuedTask], received_at: float | None = None, *,
                only_missing: bool = False, not_before: float | None = None) -> list[int]:
        now = time.time()
        if not_before is not None and not_before > now and not only_missing:
            for q in tasks:
                self.tasks[q.task_id] = {
                    "status": b"QUEUED", "owner": _b(q.owner_id), "function_id": _b(q.function_id),
                    "received_at": _b(received_at or now), "queued_at": _b(now), "attempts": _b(q.attempt - 1),
                    **self._delayed_fields(q, not_before)}
                self.expiry.pop(q.task_id, None)
                self.delayed[q.task_id] = not_before
                self.add_metrics({metrics.field(metrics.SUBMITTED, function=q.function_id): 1})
            return list(range(1, len(tasks) + 1))
        queued = []
        for i, q in enumerate(tasks, start=1):
            if only_missing and self._record(q.task_id) is not None:
                continue
            entry_id = self._add_entry(q)
            self.tasks[q.task_id] = {"status": b"QUEUED", "owner": _b(q.owner_id), "function_id": _b(q.function_id),
                                     "received_at": _b(received_at or now), "queued_at": _b(now),
                                     "attempts": _b(q.attempt - 1), "entry": entry_id}
            self.expiry.pop(q.task_id, None)
            queued.append(i)
            self.add_metrics({metrics.field(metrics.SUBMITTED, function=q.function_id): 1})
        if queued:
            self._publish("wake", str(len(queued)).encode())
        return queued

    def read(self, task_id) -> dict[str, bytes] | None:
        record = self._record(task_id)
        return dict(record) if record else None

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        return [r["status"].decode() if (r := self._record(t)) else None for t in task_ids]

    def fields(self, task_ids: list[str], names: tuple[str, ...], chunk: int = 2000) -> list[list[bytes | None]]:
        return [[(self._record(t) or {}).get(n) for n in names] for t in task_ids]

    def finish(self, results: list[Result], ttl: int, only_if: str = "") -> list[bool]:
        return [self._finish(r, ttl, only_if) for r in results]

    def _finish(self, r: Result, ttl: int, only_if: str = "", stored_at: float | None = None) -> bool:
        record = self._record(r.task_id)
        status = record.get("status") if record else None
        if status in FINAL or (only_if and status != only_if.encode()):
            return False
        record = self.tasks.setdefault(r.task_id, {})
        record.update(status=_b(r.status), result=r.result, error=_b(r.error))
        if r.started_at is not None:
            record["started_at"] = _b(r.started_at)
        if r.finished_at is not None:
            record["finished_at"] = _b(r.finished_at)
        if stored_at is not None:
            record["stored_at"] = _b(stored_at)
        if r.output:
            record["output"] = _b(r.output)
        self.expiry[r.task_id] = self.clock() + ttl
        self._publish_done(r.task_id, _b(r.status), r.result, _b(r.error), quiet=bool(r.output))
        return True

    def progress(self, reports: dict[str, tuple[float, str]]) -> None:
        for task_id, (fraction, message) in reports.items():
            record = self._record(task_id)
            if record is not None and record.get("status") == b"RUNNING":
                record.update(progress=_b(fraction), progress_message=_b(message))

    @staticmethod
    def _delayed_fields(q: QueuedTask, not_before: float) -> dict[str, bytes]:
        return {"entry": DELAYED_ENTRY.encode(), "not_before": _b(not_before), "d_arguments": q.arguments,
                "d_timeout": _b("" if q.timeout is None else repr(q.timeout)), "d_attempt": _b(q.attempt),
                "d_retry": _b(q.retry), "d_limits": _b(q.limits)}

    def promote_due(self, now: float, limit: int = 500) -> int:
        moved = 0
        for task_id in sorted((t for t, due in self.delayed.items() if due <= now), key=self.delayed.get)[:limit]:
            del self.delayed[task_id]
            record = self._record(task_id)
            if record is None or record.get("status") != b"QUEUED" or record.get("entry") != DELAYED_ENTRY.encode():
                continue
            timeout = record.pop("d_timeout", b"")
            q = QueuedTask(task_id, record["function_id"].decode(), record.get("owner", b"").decode(),
                           record.pop("d_arguments"), float(timeout) if timeout else None,
                           int(record.pop("d_attempt", b"1")), record.pop("d_retry", b"").decode(),
                           record.pop("d_limits", b"").decode())
            record["entry"] = self._add_entry(q)
            moved += 1
        if moved:
            self._publish("wake", str(moved).encode())
        return moved

    def forget_tasks(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.tasks.pop(str(task_id), None)
            self.expiry.pop(str(task_id), None)

    def try_lock(self, name: str, holder: str, ttl: float) -> bool:
        if self.locks.get(name, (None, float("-inf")))[1] > self.clock():
            return False
        self.locks[name] = (holder, self.clock() + ttl)
        return True

    def done_listener(self) -> _Listener:
        listener = _Listener(self)
        self.listeners.append(listener)
        return listener

    # --- the dispatcher ---------------------------------------------------------------

    def ensure_group(self) -> None:
        self.group = True

    def exchange(self, finished: list[Result], ttl: int, consumer: str, count: int,
                 dispatched_at: float) -> tuple[list[bool], list[Claimed]]:
        if not self.group:
            import redis

            raise redis.ResponseError("NOGROUP No such key or consumer group")
        won = [self._finish(r, ttl, stored_at=time.time()) for r in finished]
        if finished:
            second = int(time.time())
            self.throughput_counts[second] = self.throughput_counts.get(second, 0) + len(finished)
        claimed = []
        if count > 0:
            self.consumers.add(consumer)
            for entry_id in [e for e in self.stream if self._after(e)][:count]:
                self.last_delivered = entry_id
                self.pending[entry_id] = consumer
                fields = self.stream[entry_id]
                q = _parse(fields)
                code = Claim.FORGED
                record = self._record(q.task_id) if q else None
                status = record.get("status") if record else None
                if status in FINAL:
                    code = Claim.FINAL
                elif status == b"QUEUED" and record.get("entry") in (None, entry_id):
                    record.update(status=b"RUNNING", dispatched_at=_b(dispatched_at), attempts=_b(q.attempt),
                                  dispatcher=_b(consumer))
                    code = Claim.STARTED
                claimed.append(Claimed(entry_id, q, code))
        return won, claimed

    def _after(self, entry_id: bytes) -> bool:
        return _key(entry_id) > _key(self.last_delivered) if self.last_delivered else True

    def start(self, entries: list[tuple[bytes, dict]], consumer: str, dispatched_at: float) -> list[Claimed]:
        out = []
        for entry_id, fields in entries:
            q = _parse(fields)
            if q is None:
                out.append(Claimed(entry_id, None, Claim.FORGED))
                continue
            record = self._record(q.task_id)
            status = record.get("status") if record else None
            if status in FINAL:
                code = Claim.FINAL
            elif status is None or (record.get("entry") and record["entry"] != entry_id):
                code = Claim.FORGED
            elif status == b"RUNNING":
                code = Claim.WAS_RUNNING
            else:
                record.update(status=b"RUNNING", dispatched_at=_b(dispatched_at), attempts=_b(q.attempt),
                              dispatcher=_b(consumer))
                code = Claim.STARTED
            out.append(Claimed(entry_id, q, code))
        return out

    def requeue(self, items: list[tuple[bytes | None, QueuedTask]],
                not_before: dict[str, float] | None = None) -> list[bool]:
        out = []
        for entry_id, q in items:
            if entry_id:
                self.forget([entry_id])
            record = self._record(q.task_id)
            if record and record.get("status") in FINAL:
                out.append(False)
                continue
            if (not_before or {}).get(q.task_id):
                record = self.tasks.setdefault(q.task_id, {})
                record.update(self._delayed_fields(q, not_before[q.task_id]), status=b"QUEUED",
                              owner=_b(q.owner_id), function_id=_b(q.function_id), attempts=_b(q.attempt - 1))
                record.pop("dispatcher", None)
                self.delayed[q.task_id] = not_before[q.task_id]
                out.append(True)
                continue
            new_id = self._add_entry(q)
            record = self.tasks.setdefault(q.task_id, {})
            record.update(status=b"QUEUED", owner=_b(q.owner_id), function_id=_b(q.function_id),
                          attempts=_b(q.attempt - 1), entry=new_id)
            record.pop("dispatcher", None)
            self._publish("wake", b"1")
            out.append(True)
        return out

    def forget(self, entry_ids: list[bytes]) -> None:
        for entry_id in entry_ids:
            self.pending.pop(entry_id, None)
            self.stream.pop(entry_id, None)

    def repair(self, results: list[tuple[Result, dict]], ttl: int) -> list[bool]:
        out = []
        for r, fields in results:
            record = self.tasks.setdefault(r.task_id, {})
            before = record.get("status")
            record.update(status=_b(r.status), result=r.result, error=_b(r.error))
            if r.started_at is not None:
                record["started_at"] = _b(r.started_at)
            if r.finished_at is not None:
                record["finished_at"] = _b(r.finished_at)
            if r.output:
                record["output"] = _b(r.output)
            record.update({k: _b(v) for k, v in fields.items()})
            record.pop("entry", None)
            record.pop("dispatcher", None)
            self.expiry[r.task_id] = self.clock() + ttl
            changed = before != _b(r.status)
            if changed:
                self._publish_done(r.task_id, _b(r.status), r.result, _b(r.error), quiet=bool(r.output))
            out.append(changed)
        return out

    def stream_entries(self, page: int = 1000) -> Iterator[list[tuple[bytes, str]]]:
        entries = [(e, f.get(b"task_id", b"").decode()) for e, f in self.stream.items()]
        for start in range(0, len(entries), page):
            yield entries[start:start + page]

    def refresh_liveness(self, consumer: str, mode: str) -> None:
        self.alive[consumer] = self.clock() + DISPATCHER_TTL

    def _is_alive(self, name: str) -> bool:
        return self.alive.get(name, float("-inf")) > self.clock()

    def live_dispatchers(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if self._is_alive(n)}

    def live_dispatcher_names(self) -> list[str]:
        return sorted(n for n in self.alive if self._is_alive(n))

    def any_dispatcher_alive(self) -> bool:
        return any(self._is_alive(n) for n in self.alive)

    def leave(self, consumer: str) -> None:
        self.alive.pop(consumer, None)
        if consumer not in self.pending.values():
            self.consumers.discard(consumer)

    def reclaim_from_dead(self, consumer: str) -> list[tuple[str, list[tuple[bytes, dict]]]]:
        taken = []
        for name in sorted(self.consumers):
            if name == consumer or self._is_alive(name):
                continue
            ids = [e for e, c in self.pending.items() if c == name]
            if not ids:
                self.consumers.discard(name)
                continue
            for e in ids:
                self.pending[e] = consumer
            self.consumers.add(consumer)
            taken.append((name, [(e, dict(self.stream[e])) for e in ids if e in self.stream]))
        return taken

    def own_pending(self, consumer: str) -> list[tuple[bytes, dict]]:
        return [(e, dict(self.stream[e])) for e, c in self.pending.items() if c == consumer and e in self.stream]

    def listen(self) -> _Listener:
        listener = _Listener(self, control=True)
        self.listeners.append(listener)
        return listener

    def send_control(self, command: str, **fields) -> int:
        self._publish("control", json.dumps({"command": command, **fields}).encode())
        return sum(1 for listener in self.listeners if listener.control)

    # --- metrics (/metrics) -------------------------------------------------------------

    def add_metrics(self, counts: dict[str, float], lags: dict[str, float] | None = None) -> None:
        for name, amount in counts.items():
            self.counters[name] = self.counters.get(name, 0) + amount
        for consumer, lag in (lags or {}).items():
            self.lags[consumer] = (lag, self.clock() + metrics.LAG_TTL)

    def metrics(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.counters.items()}

    def metric_lags(self) -> dict[str, float]:
        return {name: lag for name, (lag, expiry) in self.lags.items() if expiry > self.clock()}

    # --- the console ------------------------------------------------------------------

    def queue_depth(self) -> QueueDepth:
        return QueueDepth(len(self.stream), len(self.pending))

    def throughput(self, now: float | None = None, window: int = THROUGHPUT_WINDOW) -> list[tuple[int, int]]:
        now = int(time.time() if now is None else now)
        return [(s, self.throughput_counts.get(s, 0)) for s in range(now - window + 1, now + 1)]

    def throughput_tail(self, seconds: int, now: float | None = None) -> list[tuple[int, int]]:
        return self.throughput(now, seconds)

    def trim_throughput(self, now: float | None = None) -> None:
        cutoff = int(time.time() if now is None else now) - THROUGHPUT_WINDOW
        self.throughput_counts = {s: n for s, n in self.throughput_counts.items() if s >= cutoff}

    def purge_queued(self, result: bytes, error: str, ttl: int, finished_at: float) -> list[str]:
        purged = []
        for entry_id in list(self.stream):
            q = _parse(self.stream[entry_id])
            record = self._record(q.task_id) if q else None
            status = record.get("status") if record else None
            if status is None or status == b"QUEUED":
                self._finish(Result(q.task_id, "FAILED", result, error, None, finished_at), ttl)
                self.tasks[q.task_id].pop("entry", None)
                self.stream.pop(entry_id, None)
                purged.append(q.task_id)
            elif status in FINAL:
                self.stream.pop(entry_id, None)
        return purged


def _key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _parse(fields: dict) -> QueuedTask | None:
    try:
        return QueuedTask.from_fields(fields)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class _Listener:
    """Both listener kinds of the Redis store, over an in-process queue."""

    def __init__(self, store: MemoryTaskStore, control: bool = False):
        self.store = store
        self.control = control
        self.watching: set[str] = set()
        self.everything = False
        self.queue: list[tuple[str, bytes]] = []

    def deliver(self, channel: str, data: bytes) -> None:
        if self.control and channel in ("wake", "control"):
            self.queue.append((channel, data))
        elif not self.control and channel.startswith("done:"):
            task_id = channel[5:]
            if self.everything or task_id in self.watching:
                self.queue.append((task_id, data))

    # ControlListener
    def socket(self):
        return None

    def messages(self) -> Iterator[tuple[str, dict | None]]:
        while self.queue:
            channel, data = self.queue.pop(0)
            yield ("wake", None) if channel == "wake" else ("control", json.loads(data))

    # DoneListener
    def watch(self, task_ids: Iterable[str]) -> None:
        self.watching.update(task_ids)

    def watch_all(self) -> None:
        self.everything = True

    def unwatch(self, task_ids: Iterable[str]) -> None:
        self.watching.difference_update(task_ids)

    def next(self, timeout: float) -> tuple[str, Result | None] | None:
        if not self.queue:
            return None
        task_id, data = self.queue.pop(0)
        return task_id, parse_done(task_id, data)

    def close(self) -> None:
        if self in self.store.listeners:
            self.store.listeners.remove(self)
