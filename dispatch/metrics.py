"""The dispatcher's share of /metrics: counted in memory as events happen, added to the
task store's counters (functions.taskstore.metrics) in one round trip every couple of
seconds, so a burst of thousands of results costs dictionary increments, not Redis commands.

Loop lag is the longest stretch the loop spent working between two waits since the last
flush: how late, at worst, a worker's message or a wake-up was noticed.
"""

from __future__ import annotations

import time
from collections import Counter

from functions.taskstore import metrics as ms
from workers.protocol import Result, TaskStatus

DEADLINE_MARK = "timed out after"  # in the error of every task killed at its deadline (DESIGN §2)


class DispatcherMetrics:
    def __init__(self, consumer: str, clock=time.monotonic):
        self.consumer = consumer
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.lag = 0.0  # longest working stretch since the last flush, seconds
        self._wait_ended: float | None = None

    # --- events (pure bookkeeping) ---------------------------------------------------------

    def finished(self, result: Result, function_id: str) -> None:
        """A task reached its final state (counted once: only the first final state is)."""
        self.counts[ms.field(ms.FINISHED, status=result.status, function=function_id)] += 1
        if result.status == TaskStatus.FAILED.value and DEADLINE_MARK in result.error.split("\n", 1)[0]:
            self.counts[ms.DEADLINE_KILLS] += 1
        if result.started_at and result.finished_at and result.finished_at >= result.started_at:
            self._observe(ms.RUN_TIME, result.finished_at - result.started_at)

    def claimed(self, entry_id: bytes | str, dispatched_at: float) -> None:
        """A task left the queue; a stream entry id starts with its enqueue time in ms."""
        raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            queued_at = int(raw.split("-", 1)[0]) / 1000
        except ValueError:
            return
        self._observe(ms.QUEUE_WAIT, max(0.0, dispatched_at - queued_at))

    def retried(self, count: int = 1) -> None:
        self.counts[ms.RETRIES] += count

    def _observe(self, name: str, value: float) -> None:
        self.counts[ms.bucket_field(name, value)] += 1
        self.counts[name + "_count"] += 1
        self.counts[name + "_sum"] += value

    # --- loop lag -------------------------------------------------------------------------

    def wait_begins(self) -> None:
        now = self.clock()
        if self._wait_ended is not None:
            self.lag = max(self.lag, now - self._wait_ended)

    def wait_ends(self) -> None:
        self._wait_ended = self.clock()

    # --- to Redis -------------------------------------------------------------------------

    def flush(self, store) -> None:
        """Add what was counted since the last flush; kept for the next one if Redis fails."""
        counts, lag = self.counts, self.lag
        self.counts, self.lag = Counter(), 0.0
        try:
            store.add_metrics(dict(counts), {self.consumer: lag})
        except Exception:
            self.counts.update(counts)
            self.lag = max(self.lag, lag)
            raise
