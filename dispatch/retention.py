"""The retention sweep inside the dispatchers: every `interval` seconds one dispatcher (the
one that takes the store's lock first) drops expired results and old task rows
(functions.retention), in a thread of its own so the loop never waits on the database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

LOCK = "retention"


class RetentionSweeper:
    def __init__(self, store, holder: str, interval: float, sweep: Callable[[], object], clock=time.monotonic):
        self.store = store
        self.holder = holder
        self.interval = interval
        self.sweep = sweep  # the database work; functions.retention.sweep with the TTLs bound
        self.clock = clock
        self.next_at = clock() + min(interval, 60.0)  # not at the very start: let the dispatcher settle
        self.thread: threading.Thread | None = None

    def due(self, now: float) -> bool:
        return self.interval > 0 and now >= self.next_at

    def maybe_run(self, now: float) -> bool:
        """Start a sweep when one is due, no sweep of ours still runs and no other dispatcher
        swept within the interval; True when one was started."""
        if not self.due(now):
            return False
        self.next_at = now + self.interval
        if self.thread is not None and self.thread.is_alive():
            return False
        if not self.store.try_lock(LOCK, self.holder, self.interval):
            return False  # another dispatcher has it, or swept less than an interval ago
        self.thread = threading.Thread(target=self._run, name="faas-retention", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        from django.db import close_old_connections

        try:
            swept = self.sweep()
            log.info("retention sweep: %s", swept)
        except Exception:  # the next interval tries again; the loop must not die of it
            log.exception("retention sweep failed")
        finally:
            close_old_connections()
