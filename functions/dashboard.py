"""Dashboard events: the dispatcher gathers changes here and sends a few coalesced
group messages a second through the Channels layer (STYLE C13)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

DASHBOARD_GROUP = "faas.dashboard"
PUBLISH_INTERVAL = 0.25  # seconds: at most four updates a second, whatever the task rate
RECENT_TASKS = 50  # task changes kept per update; the rest are only counted


class DashboardPublisher:
    """Accumulates task and worker changes; `flush` sends one update per interval."""

    def __init__(self, interval: float = PUBLISH_INTERVAL, layer=None):
        self.interval = interval
        self._layer = layer
        self.tasks: dict[str, str] = {}
        self.workers: dict[str, dict] = {}
        self.counts: dict[str, int] = {}
        self.next_send = 0.0

    def task(self, task_id: str, status: str) -> None:
        self.tasks.pop(task_id, None)
        self.tasks[task_id] = status
        if len(self.tasks) > RECENT_TASKS:
            self.tasks.pop(next(iter(self.tasks)))
        self.counts[status] = self.counts.get(status, 0) + 1

    def worker(self, identity: str, **state) -> None:
        self.workers.setdefault(identity, {}).update(state)

    def flush(self, now: float, force: bool = False) -> bool:
        if not (self.tasks or self.workers or self.counts) or (now < self.next_send and not force):
            return False
        self.next_send = now + self.interval
        event = {"type": "dashboard.update", "at": time.time(), "tasks": self.tasks, "workers": self.workers,
                 "transitions": self.counts}
        self.tasks, self.workers, self.counts = {}, {}, {}
        try:
            self._send(event)
        except Exception:  # the dashboard must never stop the dispatcher
            log.exception("could not publish a dashboard update")
        return True

    def _send(self, event: dict) -> None:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        layer = self._layer or get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(DASHBOARD_GROUP, event)
