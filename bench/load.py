"""Load generators and completion detection for the throughput, scaling and memory runs.

Completion is observed through Redis, not by polling the API: a watcher thread holds a
pattern subscription to the per-task done channels (`faas:done:*`, the same notifications
the /result long-poll waits on), so collecting results costs the platform one PUBLISH per
task that it makes anyway. Afterwards every task's hash is read once, in a pipeline, to
count failures and to collect the per-task timestamps.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import stats
from bench.httpclient import Connection
from functions.taskstore import TaskStore

TIMESTAMPS = ("received_at", "queued_at", "dispatched_at", "started_at", "finished_at", "stored_at")


class CompletionWatcher:
    """Records, for every task that reaches a final state, when this process heard of it."""

    def __init__(self, redis_url: str):
        self.store = TaskStore.connect(redis_url)
        self.listener = self.store.done_listener()
        self.listener.watch_all()
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._listen, name="completion-watcher", daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stopping:
            message = self.listener.next(timeout=0.1)
            if message is None:
                continue
            now = time.time()
            task_id = message[0]
            with self.changed:
                self.seen.setdefault(task_id, now)
                self.changed.notify_all()

    def reset(self) -> None:
        with self.changed:
            self.seen.clear()

    def wait(self, task_ids: list[str], timeout: float) -> bool:
        """Block until every id was seen or `timeout` passes; True when all were seen."""
        wanted = set(task_ids)
        end = time.monotonic() + timeout
        with self.changed:
            while True:
                if len(self.seen) >= len(wanted) and wanted <= self.seen.keys():
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.5))

    def last_seen(self, task_ids: list[str]) -> float | None:
        with self.changed:
            times = [self.seen[t] for t in task_ids if t in self.seen]
        return max(times) if times else None

    def seen_at(self, task_ids: list[str]) -> list[float | None]:
        with self.changed:
            return [self.seen.get(t) for t in task_ids]

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.listener.close()
        self.store.close()


@dataclass
class Submitted:
    """What a load generator did: ids in submission order and the client-side timing."""

    task_ids: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # wall clock when each task's request began
    request_seconds: list[float] = field(default_factory=list)  # one entry per HTTP request
    errors: list[str] = field(default_factory=list)
    started: float = 0.0  # wall clock of the first request
    finished: float = 0.0  # wall clock when the last request returned


def submit_per_request(url: str, function_id: str, payload: str, count: int, clients: int,
                       deadline: float) -> Submitted:
    """`count` tasks, one POST /execute_function each, from `clients` threads with their own
    keep-alive connections. Stops early (recording an error) once `deadline` (monotonic) passes."""
    body = ('{"function_id": "%s", "payload": "%s"}' % (function_id, payload)).encode()
    tickets = itertools.count()  # next() on a count is atomic under the GIL
    lock = threading.Lock()
    done = Submitted(task_ids=[""] * count, sent_at=[0.0] * count)

    def client() -> None:
        conn = Connection(url)
        try:
            while (i := next(tickets)) < count and time.monotonic() < deadline:
                began = time.time()
                status, data = conn.request("POST", "/execute_function", body)
                ended = time.time()
                with lock:
                    done.request_seconds.append(ended - began)
                    if status == 201:
                        done.task_ids[i], done.sent_at[i] = _task_id(data), began
                    else:
                        done.errors.append(f"{status}: {data[:200]!r}")
        except Exception as exc:  # recorded, never hidden: the run is marked incomplete
            with lock:
                done.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"client-{n}") for n in range(clients)]
    done.started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.finished = time.time()
    kept = [(t, s) for t, s in zip(done.task_ids, done.sent_at) if t]
    done.task_ids, done.sent_at = [t for t, _ in kept], [s for _, s in kept]
    if len(kept) < count and time.monotonic() >= deadline:
        done.errors.append(f"submission stopped at the run's time limit after {len(kept)} of {count} tasks")
    return done


def _task_id(data: bytes) -> str:
    # {"task_id":"<uuid>"}: parsed by hand, the cheapest way to keep client CPU low
    text = data.decode()
    start = text.index('"task_id"') + len('"task_id"')
    first = text.index('"', start + 1)
    return text[first + 1:text.index('"', first + 1)]


def submit_batches(url: str, submit: Callable[[Connection, list[str]], list[str]], payloads: list[str],
                   batch_size: int, deadline: float) -> Submitted:
    """POST /execute_batch with `batch_size` calls at a time, from one client."""
    done = Submitted()
    conn = Connection(url, timeout=120)
    done.started = time.time()
    try:
        for start in range(0, len(payloads), batch_size):
            if time.monotonic() >= deadline:
                done.errors.append("submission stopped at the run's time limit")
                break
            began = time.time()
            ids = submit(conn, payloads[start:start + batch_size])
            done.request_seconds.append(time.time() - began)
            done.task_ids += ids
            done.sent_at += [began] * len(ids)
    except Exception as exc:
        done.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    done.finished = time.time()
    return done


def read_hashes(store: TaskStore, task_ids: list[str]) -> list[dict]:
    """Status and timestamps of each task from its Redis record (floats; None where missing)."""
    rows = []
    for values in store.fields(task_ids, ("status", *TIMESTAMPS)):
        row = {"status": values[0].decode() if values[0] else None}
        for name, value in zip(TIMESTAMPS, values[1:]):
            row[name] = float(value) if value not in (None, b"") else None
        rows.append(row)
    return rows


def outcome(submitted: Submitted, rows: list[dict], seen_last: float | None, expected: int) -> dict:
    """The figures of one run: makespan from the first request to the last completion heard."""
    completed = sum(1 for row in rows if row["status"] == "COMPLETED")
    failed = sum(1 for row in rows if row["status"] == "FAILED")
    stored = [row["stored_at"] for row in rows if row.get("stored_at")]
    end = seen_last if seen_last is not None else (max(stored) if stored else submitted.finished)
    makespan = end - submitted.started
    return {
        "tasks": expected, "submitted": len(submitted.task_ids), "completed": completed, "failed": failed,
        "unfinished": expected - completed - failed, "errors": submitted.errors[:5],
        "makespan_s": makespan, "tasks_per_s": stats.rate(completed, makespan),
        "server_makespan_s": (max(stored) - submitted.started) if stored else None,
        "submit_s": submitted.finished - submitted.started,
        "submit_per_s": stats.rate(len(submitted.task_ids), submitted.finished - submitted.started),
        "request_ms": stats.summary(submitted.request_seconds, 1000.0),
    }
