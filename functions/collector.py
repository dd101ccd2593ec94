"""Many results in few requests: the client's collector of final task bodies.

Every id the client submits is remembered (up to `KEEP`) until its result is known. When
the caller waits for one task, the request (`POST /results`) also asks after up to
`prefetch` of the client's other unfinished tasks, oldest first; the server answers once
enough are final, lingering a moment while more keep finishing. Bodies the caller did not
ask for yet are kept here, so a program that submits many tasks and then asks for each
result in turn makes a handful of requests, not one per task. Threads share one
collector: an id that another thread's request covers is waited for, not asked again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

PREFETCH = 1000  # other unfinished tasks of this client asked after in one request
MAX_IDS = 10_000  # ids the server takes in one POST /results
KEEP = 10_000  # ids remembered, and bodies kept for the caller, before the oldest are forgotten


class ResultCollector:
    """`collect(ids, timeout, need)`: the final bodies of `ids` once `need` of them are final
    or the time is up. `poll(ids, wait, at_least) -> (final bodies, {id: status})` is one
    POST /results; `poll_one(id, wait)` one GET /result, the cheaper request for one id."""

    def __init__(self, poll: Callable[[list[str], float, int], tuple[list[dict], dict]],
                 poll_one: Callable[[str, float], dict], *, prefetch: int = PREFETCH, max_wait: float = 60.0):
        self.poll, self.poll_one = poll, poll_one
        self.prefetch, self.max_wait = prefetch, max_wait
        self._cond = threading.Condition()
        self._unfinished: dict[str, None] = {}  # submitted, result not yet seen; oldest first
        self._ready: dict[str, dict] = {}  # final bodies fetched ahead, not yet taken; oldest first
        self._fetching: set[str] = set()  # ids some thread's request is asking after now
        self.requests = 0  # requests made, for tests and curiosity

    def submitted(self, task_ids: Iterable[str]) -> None:
        with self._cond:
            for task_id in task_ids:
                self._unfinished[task_id] = None
            _trim(self._unfinished, KEEP)

    def collect(self, task_ids: list[str], timeout: float | None, need: int | None = None) -> dict[str, dict]:
        """Final bodies of `task_ids` (taken out of the collector), once `need` (default:
        all) of them are final or `timeout` seconds have passed (None: no limit)."""
        wanted = list(dict.fromkeys(task_ids))
        need = len(wanted) if need is None else min(need, len(wanted))
        end = None if timeout is None else time.monotonic() + timeout
        got: dict[str, dict] = {}
        while True:
            with self._cond:
                for task_id in wanted:
                    if task_id not in got and task_id in self._ready:
                        got[task_id] = self._ready.pop(task_id)
                left = None if end is None else end - time.monotonic()
                if len(got) >= need or (left is not None and left <= 0):
                    return got
                mine = [t for t in wanted if t not in got and t not in self._fetching][:MAX_IDS]
                if not mine:  # another thread's request covers them: its answer wakes us
                    self._cond.wait(left)
                    continue
                batch = mine + self._extra(set(mine), MAX_IDS - len(mine))
                self._fetching.update(batch)
            wait = self.max_wait if left is None else min(self.max_wait, left)
            try:
                self._fetch(batch, wait, need - len(got), got, set(wanted))
            except Exception as exc:
                if getattr(exc, "status_code", None) != 404 or len(batch) == len(mine):
                    raise
                self.forget(batch[len(mine):])  # a prefetched task is gone (deleted?): ask again without them

    def _extra(self, mine: set[str], room: int) -> list[str]:
        """Called with the lock held: this client's other unfinished tasks, oldest first."""
        extra = []
        for task_id in self._unfinished:
            if len(extra) >= min(room, self.prefetch):
                break
            if task_id not in mine and task_id not in self._fetching and task_id not in self._ready:
                extra.append(task_id)
        return extra

    def _fetch(self, batch: list[str], wait: float, at_least: int, got: dict, wanted: set[str]) -> None:
        finals: list[dict] = []
        try:
            self.requests += 1
            if len(batch) == 1:
                body = self.poll_one(batch[0], wait)
                finals = [body] if body.get("status") in ("COMPLETED", "FAILED") else []
            else:
                finals, _pending = self.poll(batch, wait, max(1, at_least))
        finally:
            with self._cond:
                self._fetching.difference_update(batch)
                for body in finals:
                    task_id = body["task_id"]
                    self._unfinished.pop(task_id, None)
                    if task_id in wanted and task_id not in got:
                        got[task_id] = body
                    else:
                        self._ready[task_id] = body
                _trim(self._ready, KEEP)
                self._cond.notify_all()

    def put_back(self, bodies: Iterable[dict]) -> None:
        """Keep bodies `collect` returned for a later `collect` (as_completed yields ids first)."""
        with self._cond:
            for body in bodies:
                self._ready[body["task_id"]] = body
            _trim(self._ready, KEEP)

    def forget(self, task_ids: Iterable[str]) -> None:
        """Stop tracking tasks whose results the caller will not ask for."""
        with self._cond:
            for task_id in task_ids:
                self._unfinished.pop(task_id, None)
                self._ready.pop(task_id, None)


def _trim(ordered: dict, keep: int) -> None:
    while len(ordered) > keep:
        del ordered[next(iter(ordered))]
