"""Tasks submitted with a countdown or an eta wait in the task store's delayed set, not in a
worker; each dispatcher moves the ones whose time has come onto the queue, checking a few
times a second (the move is one atomic script, so several dispatchers never queue a task
twice)."""

from __future__ import annotations

import time

PROMOTE_INTERVAL = 0.2  # seconds between checks of the delayed set


class DelayedPromoter:
    def __init__(self, store, wall_clock=time.time, interval: float = PROMOTE_INTERVAL):
        self.store = store
        self.wall_clock = wall_clock  # due times are unix times, shared by every machine
        self.interval = interval
        self.next_at = 0.0

    def tick(self) -> int:
        """Queue the tasks that are due, at most once per interval; returns how many."""
        now = self.wall_clock()
        if now < self.next_at:
            return 0
        self.next_at = now + self.interval
        return self.store.promote_due(now)
