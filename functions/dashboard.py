"""The live dashboard's data: the snapshot a page starts from, and the coalesced updates the
dispatcher publishes through the Channels layer.

The snapshot and the summary carried by each update read only the durable record and the
Redis mirror, so the dashboard keeps no history of its own and survives restarts. Counts
are one GROUP BY on the indexed status column; no query does per-row work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from django.db.models import Count
from django.db.models.functions import Substr

from functions.models import Function, Task, Worker
from functions.taskstore import TaskStore, store_for

log = logging.getLogger(__name__)

DASHBOARD_GROUP = "faas.dashboard"
PUBLISH_INTERVAL = 0.25  # seconds: at most four updates a second, whatever the task rate
SUMMARY_INTERVAL = 2.0  # seconds: an update (with fresh counts) is sent this often even when idle
RECENT_TASKS = 50  # task changes kept per update, and tasks listed on the page
CHART_SECONDS = 300  # throughput history the page draws
TAIL_SECONDS = 10  # throughput seconds each update refreshes
MAX_WORKERS = 200  # worker rows in a snapshot: every live one first, then the latest dead
ERROR_CHARS = 200  # error text shown per task on the page; the admin shows the rest
SEND_TIMEOUT = 2.0  # seconds a forced flush waits for the sender thread


# --- the read side: shared by the admin view, the consumer and the publisher ---------------

def status_counts() -> dict[str, int]:
    """Tasks per status, every status present; COUNT(*) lets SQLite answer from the index."""
    counts = dict.fromkeys(Task.Status.values, 0)
    rows = Task.objects.order_by().values_list("status").annotate(n=Count("*"))
    counts.update({status: n for status, n in rows})
    return counts


def latest_tasks(store: TaskStore, limit: int = RECENT_TASKS) -> list[dict]:
    """The newest tasks with the mirror's status (fresher than the batched database writes).

    Names are looked up separately rather than joined, so the planner always walks the
    created_at index and stops after `limit` rows.
    """
    rows = list(Task.objects.order_by("-created_at").values(
        "id", "status", "function_id", "owner_id", "worker_id", "attempts", "created_at", "started_at",
        "finished_at", "retry_of_id", error_head=Substr("error", 1, ERROR_CHARS))[:limit])
    names = dict(Function.objects.filter(id__in={row["function_id"] for row in rows}).values_list("id", "name"))
    workers = dict(Worker.objects.filter(id__in={row["worker_id"] for row in rows} - {None})
                   .values_list("id", "identity"))
    statuses = store.statuses([str(row["id"]) for row in rows]) if rows else []
    return [task_row(row, names, workers, status) for row, status in zip(rows, statuses)]


def task_row(row: dict, names: dict, workers: dict, live_status: str | None) -> dict:
    return {
        "id": str(row["id"]), "status": live_status or row["status"], "function": names.get(row["function_id"], ""),
        "owner_id": row["owner_id"], "worker": workers.get(row["worker_id"], ""), "attempts": row["attempts"],
        "created_at": epoch(row["created_at"]), "started_at": epoch(row["started_at"]),
        "finished_at": epoch(row["finished_at"]), "retry_of": str(row["retry_of_id"] or ""),
        "error": first_line(row["error_head"]),
    }


def first_line(text: str | None) -> str:
    """The headline of an error ("ValueError: bad value"); the admin shows the traceback."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def worker_rows() -> list[dict]:
    fields = ["identity", "mode", "hostname", "pid", "processes", "busy", "alive", "draining", "tasks_done",
              "last_heartbeat", "registered_at"]
    rows = Worker.objects.order_by("-alive", "-last_heartbeat").values(*fields)[:MAX_WORKERS]
    return [{**row, "last_heartbeat": epoch(row["last_heartbeat"]), "registered_at": epoch(row["registered_at"])}
            for row in rows]


def epoch(value) -> float | None:
    """Datetimes travel as unix seconds: msgpack (the channel layer) and JSON both carry floats."""
    return None if value is None else value.timestamp()


def queue_state(store: TaskStore) -> dict:
    depth = store.queue_depth()
    return {"waiting": depth.waiting, "in_flight": depth.pending, "length": depth.length}


def summary(store: TaskStore) -> dict:
    """What every update refreshes: counts, queue depth, the newest tasks, recent throughput."""
    now = time.time()
    return {"counts": status_counts(), "queue": queue_state(store), "latest": latest_tasks(store),
            "throughput": series(store.throughput_tail(TAIL_SECONDS, now))}


def snapshot(store: TaskStore) -> dict:
    """The page's starting state: the summary, the full throughput chart, and every worker."""
    state = summary(store)
    state.update(type="snapshot", at=time.time(), workers=worker_rows(),
                 throughput=series(store.throughput(window=CHART_SECONDS)))
    return state


def series(points: list[tuple[int, int]]) -> dict:
    """Per-second counts as {"end": last second, "counts": [...oldest first]}: compact JSON."""
    return {"end": points[-1][0] if points else int(time.time()), "counts": [n for _, n in points]}


# --- the write side: the dispatcher's publisher ---------------------------------------------

class DashboardPublisher:
    """Accumulates task and worker changes in O(1) per call; `flush` sends one update per
    interval. Sending (and reading the summary) happens on a daemon thread, so a slow
    database or Redis never stalls the dispatcher loop."""

    def __init__(self, interval: float = PUBLISH_INTERVAL, layer=None,
                 summarize: Callable[[], dict] | None = None, summary_interval: float = SUMMARY_INTERVAL):
        self.interval = interval
        self.summary_interval = summary_interval
        self._layer = layer
        self._summarize = summarize
        self.tasks: dict[str, str] = {}
        self.workers: dict[str, dict] = {}
        self.counts: dict[str, int] = {}
        self.next_send = 0.0
        self.next_summary = 0.0
        self._sender: _Sender | None = None

    def task(self, task_id: str, status: str) -> None:
        self.tasks.pop(task_id, None)
        self.tasks[task_id] = status
        if len(self.tasks) > RECENT_TASKS:
            self.tasks.pop(next(iter(self.tasks)))
        self.counts[status] = self.counts.get(status, 0) + 1

    def worker(self, identity: str, **state) -> None:
        self.workers.setdefault(identity, {}).update(state)

    def next_due(self, now: float) -> float:
        """When `flush` next has something to send."""
        return max(now, self.next_send) if (self.tasks or self.workers or self.counts) else self.next_summary

    def flush(self, now: float, force: bool = False) -> bool:
        """Hand the gathered changes to the sender when due; a forced flush waits for it.

        With nothing changed an update still goes out every `summary_interval`, so counts
        and queue depth follow tasks submitted or cancelled through the web side.
        """
        changed = bool(self.tasks or self.workers or self.counts)
        due = (changed and (force or now >= self.next_send)) or now >= self.next_summary
        if due:
            self.next_send = now + self.interval
            self.next_summary = now + self.summary_interval
            event = {"type": "dashboard.update", "at": time.time(), "tasks": self.tasks, "workers": self.workers,
                     "transitions": self.counts}
            self.tasks, self.workers, self.counts = {}, {}, {}
            self._ensure_sender().offer(event)
        if force and self._sender is not None:
            self._sender.wait_idle(SEND_TIMEOUT)
        return due

    def _ensure_sender(self) -> _Sender:
        if self._sender is None or not self._sender.is_alive():
            self._sender = _Sender(self._layer, self._summarize)
            self._sender.start()
        return self._sender


class _Sender(threading.Thread):
    """One pending event at a time: a newer event merges into an unsent one, so a slow
    channel layer costs freshness, never memory or dispatcher time."""

    def __init__(self, layer, summarize: Callable[[], dict] | None):
        super().__init__(name="dashboard-publisher", daemon=True)
        self.layer = layer
        self.summarize = summarize
        self.pending: dict | None = None
        self.busy = False
        self.cond = threading.Condition()

    def offer(self, event: dict) -> None:
        with self.cond:
            self.pending = event if self.pending is None else merge(self.pending, event)
            self.cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.pending is None and not self.busy, timeout)

    def run(self) -> None:
        loop = asyncio.new_event_loop()  # one loop for the thread's life: channels-redis keeps its pool
        summarize = self.summarize or default_summarize()
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.pending is not None)
                event, self.pending, self.busy = self.pending, None, True
            try:
                self.send(loop, event, summarize)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def send(self, loop, event: dict, summarize: Callable[[], dict]) -> None:
        try:
            event["summary"] = summarize()
        except Exception:  # counts are a bonus; the changes still go out
            log.exception("could not read the dashboard summary")
        try:
            layer = self.layer or default_layer()
            if layer is not None:
                loop.run_until_complete(layer.group_send(DASHBOARD_GROUP, event))
        except Exception:  # the dashboard must never stop the dispatcher
            log.exception("could not publish a dashboard update")


def merge(old: dict, new: dict) -> dict:
    """Fold an unsent update into a newer one: latest task statuses win, counts add up."""
    tasks = {**old["tasks"], **new["tasks"]}
    workers = {i: {**old["workers"].get(i, {}), **new["workers"].get(i, {})}
               for i in {**old["workers"], **new["workers"]}}
    counts = {s: old["transitions"].get(s, 0) + new["transitions"].get(s, 0)
              for s in {**old["transitions"], **new["transitions"]}}
    return {**new, "tasks": dict(list(tasks.items())[-RECENT_TASKS:]), "workers": workers, "transitions": counts}


def default_layer():
    from channels.layers import get_channel_layer

    return get_channel_layer()


def default_summarize() -> Callable[[], dict]:
    """Read settings once, when the sender starts; close stale connections before each read."""
    from django.conf import settings
    from django.db import close_old_connections

    r = store_for(settings.REDIS_URL)

    def summarize() -> dict:
        close_old_connections()
        return summary(r)

    return summarize
