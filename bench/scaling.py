"""Weak scaling: N worker processes, 10 tasks per process, no-op and sleep tasks, per mode.

All N×10 tasks are queued in one /execute_batch request, so submission is not what is
measured; the makespan runs from that request to the last completion heard.
Efficiency against the ideal: for sleep tasks the ideal makespan is tasks-per-process ×
the sleep (every process busy all the time, zero overhead); for both kinds the weak-scaling
efficiency against one process is makespan(1) / makespan(N).
"""

from __future__ import annotations

import statistics
import time

from bench import stats
from bench.config import BenchConfig
from bench.harness import NOOP_CALL, BenchPlatform, Setup
from bench.load import CompletionWatcher, outcome, read_hashes, submit_batches
from workers.serialization import serialize

KINDS = ("noop", "sleep")


def run_point(harness: BenchPlatform, setup: Setup, watcher: CompletionWatcher, config: BenchConfig,
              kind: str) -> dict:
    """The median of `scaling_repeats` runs of one (mode, processes, kind) point."""
    count = setup.processes * config.tasks_per_process
    function, payload = ("noop", NOOP_CALL) if kind == "noop" else ("pause", serialize(((config.sleep_seconds,), {})))
    runs, errors = [], []
    for _ in range(config.scaling_repeats):
        watcher.reset()
        deadline = time.monotonic() + config.run_timeout
        submitted = submit_batches(harness.urls["gunicorn"],
                                   lambda conn, chunk: harness.submit_batch(conn, function, chunk),
                                   [payload] * count, count, deadline)
        if not watcher.wait(submitted.task_ids, timeout=max(1.0, deadline - time.monotonic())):
            errors.append("not every completion was heard before the run's time limit")
        figures = outcome(submitted, read_hashes(harness.r, submitted.task_ids),
                          watcher.last_seen(submitted.task_ids), count)
        errors += figures["errors"]
        runs.append(figures)
    makespans = [r["makespan_s"] for r in runs]
    makespan = statistics.median(makespans)
    ideal = config.tasks_per_process * config.sleep_seconds if kind == "sleep" else None
    return {
        "mode": setup.mode, "kind": kind, "processes": setup.processes, "tasks": count,
        "makespan_s": makespan, "makespans_s": makespans, "tasks_per_s": stats.rate(count, makespan),
        "completed": min(r["completed"] for r in runs), "failed": max(r["failed"] for r in runs),
        "ideal_s": ideal, "efficiency_ideal": ideal / makespan if ideal else None, "errors": errors[:5],
    }


def add_relative_efficiency(points: list[dict]) -> None:
    """efficiency_vs_1 = makespan with one process / makespan with N, per mode and kind."""
    base = {(p["mode"], p["kind"]): p["makespan_s"] for p in points if p["processes"] == 1}
    for p in points:
        one = base.get((p["mode"], p["kind"]))
        p["efficiency_vs_1"] = one / p["makespan_s"] if one and p["makespan_s"] > 0 else None
