"""Memory under a burst: queue many tasks at once (in batches, while the dispatcher runs),
sample dispatcher and web RSS until the burst has drained, and time GET /status meanwhile."""

from __future__ import annotations

import threading
import time

from bench import procstat, stats
from bench.config import BenchConfig
from bench.harness import NOOP_CALL, BenchPlatform, Setup
from bench.httpclient import Connection
from bench.load import CompletionWatcher, outcome, read_hashes, submit_batches

SAMPLE_INTERVAL = 0.1  # seconds between RSS samples
PROBE_PAUSE = 0.005  # seconds between /status requests: a light, steady reader, not a load generator
MB = 1024 * 1024


class Sampler(threading.Thread):
    """RSS of the dispatcher and the web server and the queue depth, every SAMPLE_INTERVAL."""

    def __init__(self, harness: BenchPlatform, setup: Setup, limit: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.harness, self.setup, self.limit = harness, setup, limit
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, float, int]] = []  # (t, dispatcher MB, web MB, queue length)

    def run(self) -> None:
        began = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - began < self.limit:
            self.samples.append((time.monotonic() - began, procstat.rss_bytes(self.setup.dispatcher.pid) / MB,
                                 self.harness.web_rss() / MB, self.harness.queue_depth().length))
            self.stop.wait(SAMPLE_INTERVAL)


class StatusProbe(threading.Thread):
    """GET /status/<id> of tasks from the burst, one at a time, until stopped."""

    def __init__(self, url: str, ids: list[str], limit: float, max_requests: int = 100_000):
        super().__init__(name="status-probe", daemon=True)
        self.url, self.ids, self.limit, self.max_requests = url, ids, limit, max_requests
        self.stop = threading.Event()
        self.times: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        conn = Connection(self.url)
        began = time.monotonic()
        try:
            while (not self.stop.is_set() and time.monotonic() - began < self.limit
                   and len(self.times) < self.max_requests):
                if not self.ids:
                    self.stop.wait(0.01)
                    continue
                task_id = self.ids[len(self.times) % len(self.ids)]
                t0 = time.perf_counter()
                status, _ = conn.request("GET", f"/status/{task_id}")
                self.times.append(time.perf_counter() - t0)
                if status != 200 and len(self.errors) < 5:
                    self.errors.append(f"/status answered {status}")
                self.stop.wait(PROBE_PAUSE)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


def run(harness: BenchPlatform, setup: Setup, watcher: CompletionWatcher, config: BenchConfig) -> dict:
    count = config.burst_tasks
    watcher.reset()
    dispatcher_before, web_before = procstat.rss_bytes(setup.dispatcher.pid) / MB, harness.web_rss() / MB
    sampler = Sampler(harness, setup, config.run_timeout)
    probe_ids: list[str] = []
    probe = StatusProbe(harness.urls["gunicorn"], probe_ids, config.run_timeout)
    sampler.start()
    probe.start()
    deadline = time.monotonic() + config.run_timeout

    def submit(conn, chunk):
        ids = harness.submit_batch(conn, "noop", chunk)
        probe_ids.extend(ids[:: max(1, len(ids) // 50)])  # the probe reads tasks from every batch
        return ids

    try:
        submitted = submit_batches(harness.urls["gunicorn"], submit, [NOOP_CALL] * count, config.burst_batch, deadline)
        drained = watcher.wait(submitted.task_ids, timeout=max(1.0, deadline - time.monotonic()))
    finally:
        probe.stop.set()
        sampler.stop.set()
        probe.join(10)
        sampler.join(10)
    figures = outcome(submitted, read_hashes(harness.r, submitted.task_ids), watcher.last_seen(submitted.task_ids),
                      count)
    if not drained:
        figures["errors"].append("the burst had not drained at the run's time limit")
    dispatcher_peak = max([s[1] for s in sampler.samples] or [dispatcher_before])
    web_peak = max([s[2] for s in sampler.samples] or [web_before])
    figures.update({
        "mode": setup.mode, "processes": setup.processes, "batch_size": config.burst_batch,
        "dispatcher_rss_mb": {"before": dispatcher_before, "peak": dispatcher_peak,
                              "after": procstat.rss_bytes(setup.dispatcher.pid) / MB},
        "web_rss_mb": {"before": web_before, "peak": web_peak, "after": harness.web_rss() / MB},
        "web_processes": len(procstat.tree(harness.servers["gunicorn"].pid)),
        "peak_queue_length": max([s[3] for s in sampler.samples] or [0]),
        "status_ms": stats.summary(probe.times, 1000.0), "status_errors": probe.errors,
        "timeline": [[round(t, 3), round(d, 2), round(w, 2), q] for t, d, w, q in sampler.samples],
    })
    return figures
