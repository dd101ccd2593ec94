"""Throughput: N no-op tasks end to end, from the first request to the last completion heard,
either one HTTP request per task from concurrent clients or in /execute_batch requests."""

from __future__ import annotations

import time

from bench import procstat
from bench.config import BenchConfig
from bench.harness import NOOP_CALL, BenchPlatform, Setup, cpu_delta
from bench.load import CompletionWatcher, Submitted, outcome, read_hashes, submit_batches, submit_per_request

PER_REQUEST = "per-request"
BATCH = "batch"


def run(harness: BenchPlatform, setup: Setup, watcher: CompletionWatcher, config: BenchConfig, style: str,
        server: str = "gunicorn") -> tuple[dict, list[dict], Submitted, list[float | None]]:
    """One throughput run; returns its figures, and the per-task rows and times for the breakdown."""
    count, url = config.throughput_tasks, harness.urls[server]
    watcher.reset()
    before, processes_before = harness.cpu(setup, server), procstat.process_table()
    deadline = time.monotonic() + config.run_timeout
    if style == PER_REQUEST:
        submitted = submit_per_request(url, harness.functions["noop"], NOOP_CALL, count, config.clients, deadline)
    else:
        submitted = submit_batches(url, lambda conn, chunk: harness.submit_batch(conn, "noop", chunk),
                                   [NOOP_CALL] * count, config.batch_size, deadline)
    all_seen = watcher.wait(submitted.task_ids, timeout=max(1.0, deadline - time.monotonic()))
    spent = cpu_delta(before, harness.cpu(setup, server))
    others = procstat.foreign_cpu(processes_before, procstat.process_table(), harness.own_processes())
    rows = read_hashes(harness.r, submitted.task_ids)
    figures = outcome(submitted, rows, watcher.last_seen(submitted.task_ids), count)
    if not all_seen:
        figures["errors"].append("not every completion was heard before the run's time limit")
    done = max(1, figures["completed"])
    figures.update({
        "mode": setup.mode, "style": style, "server": server, "processes": setup.processes,
        "clients": config.clients if style == PER_REQUEST else 1,
        "batch_size": config.batch_size if style == BATCH else 1,
        "cpu_s": spent, "cpu_ms_per_task": {k: v * 1000.0 / done for k, v in spent.items()},
        "steal_cores": spent.get("steal", 0.0) / figures["makespan_s"] if figures["makespan_s"] > 0 else None,
        "other_load_cores": spent.get("other", 0.0) / figures["makespan_s"] if figures["makespan_s"] > 0 else None,
        "other_processes": others,
    })
    return figures, rows, submitted, watcher.seen_at(submitted.task_ids)
