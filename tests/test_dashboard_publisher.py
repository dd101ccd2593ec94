"""The dispatcher's dashboard publisher: coalescing, never blocking, always sending something useful."""

from __future__ import annotations

import asyncio
import time

from functions import dashboard
from functions.dashboard import DashboardPublisher, merge
from tests.helpers import wait_until


class FakeLayer:
    """Records group_send calls; optionally slow, like a struggling Redis."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.sent: list[tuple[str, dict]] = []

    async def group_send(self, group: str, message: dict) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.sent.append((group, message))


def publisher(layer, **kwargs) -> DashboardPublisher:
    return DashboardPublisher(layer=layer, summarize=lambda: {"counts": {"QUEUED": 1}}, **kwargs)


def test_a_burst_of_10000_tasks_becomes_a_handful_of_messages():
    layer = FakeLayer()
    pub = publisher(layer)
    start = time.perf_counter()
    for i in range(10_000):  # one simulated second of a dispatcher finishing 10,000 tasks
        pub.task(f"t{i}", "COMPLETED")
        pub.flush(now=100.0 + i / 10_000)
    elapsed = time.perf_counter() - start
    pub.flush(now=101.0, force=True)
    assert 1 <= len(layer.sent) <= 6, len(layer.sent)
    assert all(group == dashboard.DASHBOARD_GROUP for group, _ in layer.sent)
    assert sum(m["transitions"].get("COMPLETED", 0) for _, m in layer.sent) == 10_000
    assert all(len(m["tasks"]) <= dashboard.RECENT_TASKS for _, m in layer.sent)
    assert layer.sent[-1][1]["tasks"].get("t9999") == "COMPLETED"
    assert elapsed < 1.0, f"10,000 task()+flush() calls took {elapsed:.2f} s"


def test_a_slow_channel_layer_never_blocks_the_dispatcher():
    layer = FakeLayer(delay=0.5)
    pub = publisher(layer, interval=0.0)
    start = time.perf_counter()
    for i in range(2_000):
        pub.task(f"t{i}", "RUNNING")
        pub.flush(now=float(i))  # every call is due: the sender is busy, events merge
    assert time.perf_counter() - start < 0.4
    pub.flush(now=5000.0, force=True)
    wait_until(lambda: sum(m["transitions"].get("RUNNING", 0) for _, m in layer.sent) == 2_000, timeout=5)
    assert len(layer.sent) <= 4


def test_every_update_carries_the_summary_and_idle_updates_keep_coming():
    layer = FakeLayer()
    pub = publisher(layer, summary_interval=2.0)
    assert pub.flush(now=10.0) is True  # nothing changed, but the first summary is due
    wait_until(lambda: len(layer.sent) == 1)
    assert pub.flush(now=11.0) is False
    pub.worker("w1", busy=1)
    assert pub.flush(now=11.5) is True  # a change goes out at once
    wait_until(lambda: len(layer.sent) == 2)
    assert pub.flush(now=13.0) is False
    assert pub.flush(now=13.6) is True  # idle again: the next summary is due
    pub.flush(now=13.7, force=True)
    assert len(layer.sent) == 3
    assert all(m["summary"] == {"counts": {"QUEUED": 1}} for _, m in layer.sent)
    assert layer.sent[1][1]["workers"] == {"w1": {"busy": 1}}


def test_a_failing_summary_still_sends_the_changes(caplog):
    layer = FakeLayer()

    def broken():
        raise RuntimeError("database unavailable")

    pub = DashboardPublisher(layer=layer, summarize=broken)
    pub.task("t1", "FAILED")
    pub.flush(now=1.0, force=True)
    assert layer.sent[0][1]["tasks"] == {"t1": "FAILED"}
    assert "summary" not in layer.sent[0][1]
    assert "could not read the dashboard summary" in caplog.text


def test_merge_keeps_latest_statuses_and_adds_counts():
    old = {"type": "dashboard.update", "at": 1.0, "tasks": {"a": "RUNNING", "b": "RUNNING"},
           "workers": {"w": {"busy": 2, "alive": True}}, "transitions": {"RUNNING": 2}}
    new = {"type": "dashboard.update", "at": 2.0, "tasks": {"a": "COMPLETED"},
           "workers": {"w": {"busy": 1}}, "transitions": {"COMPLETED": 1}}
    merged = merge(old, new)
    assert merged["at"] == 2.0
    assert merged["tasks"] == {"b": "RUNNING", "a": "COMPLETED"}
    assert merged["workers"] == {"w": {"busy": 1, "alive": True}}
    assert merged["transitions"] == {"RUNNING": 2, "COMPLETED": 1}
