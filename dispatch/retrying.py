"""How the dispatcher retries a task: the task's own retry policy (from its function or its
submit; workers.retrying) or, without one, `--retries` for lost tasks; the back-off it
waits in the delayed set; and the short history of earlier attempts' errors that the
final failure carries. The record travels with the task as QueuedTask.retry (JSON), so
any dispatcher can take the next attempt."""

from __future__ import annotations

import random
import time

from functions.taskstore import QueuedTask
from workers.retrying import RetryPolicy, parse_record, retry_record

HISTORY_LINE = 200  # characters kept of each earlier attempt's error


def _decode(q: QueuedTask) -> tuple[RetryPolicy | None, list[str]]:
    return parse_record(q.retry)


class RetryPlanner:
    def __init__(self, default_retries: int, wall_clock=time.time, rng: random.Random | None = None):
        self.default_retries = default_retries  # --retries: for tasks without a policy of their own
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()

    def retry_on(self, q: QueuedTask) -> tuple[str, ...]:
        """Exception names the worker should treat as retryable for this task."""
        policy, _ = _decode(q)
        return policy.retry_on if policy and policy.max_retries else ()

    def left(self, q: QueuedTask) -> bool:
        policy, _ = _decode(q)
        return q.attempt <= (policy.max_retries if policy else self.default_retries)

    def next_attempt(self, q: QueuedTask, error: str) -> tuple[QueuedTask, float | None]:
        """The task's next attempt (with this attempt's error in its history) and the unix
        time it may run from (None: at once)."""
        policy, errors = _decode(q)
        errors = errors + [f"attempt {q.attempt}: {error.split(chr(10), 1)[0][:HISTORY_LINE]}"]
        delay = policy.delay(q.attempt, self.rng) if policy else 0.0
        return q.again(q.attempt + 1, retry_record(policy, errors)), (self.wall_clock() + delay if delay > 0 else None)

    def final_error(self, q: QueuedTask, error: str) -> str:
        """The last attempt's error, followed by the earlier ones in short."""
        _, errors = _decode(q)
        return f"{error}\n\nEarlier attempts:\n" + "\n".join(errors) if errors else error
