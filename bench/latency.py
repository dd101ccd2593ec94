"""Latency: sequential no-op round trips through the SDK, submit then the /result long-poll."""

from __future__ import annotations

import time

from bench import stats
from bench.harness import BenchPlatform, Setup
from bench.load import read_hashes
from functions.client import FaaSClient

RESULT_TIMEOUT = 30.0  # seconds one round trip may wait for its result


def run(harness: BenchPlatform, setup: Setup, count: int, run_timeout: float,
        server: str = "gunicorn") -> tuple[dict, list[dict], list, list]:
    """`count` round trips, one at a time; returns figures and per-task rows/times for the breakdown."""
    client = FaaSClient(harness.urls[server], token="")
    function_id = harness.functions["noop"]
    ids, sent, submitted, seen, errors = [], [], [], [], []
    deadline = time.monotonic() + run_timeout
    try:
        client.result(client.submit(function_id), timeout=RESULT_TIMEOUT)  # the SDK's connection, warm
        for _ in range(count):
            if time.monotonic() >= deadline:
                errors.append(f"stopped at the run's time limit after {len(ids)} of {count} round trips")
                break
            began = time.time()
            task_id = client.submit(function_id)
            queued = time.time()
            client.result(task_id, timeout=RESULT_TIMEOUT)
            ended = time.time()
            ids.append(task_id), sent.append(began), submitted.append(queued), seen.append(ended)
    except Exception as exc:  # recorded in the report, never hidden
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    figures = {
        "mode": setup.mode, "processes": setup.processes, "round_trips": len(ids), "errors": errors,
        "round_trip_ms": stats.summary([e - b for b, e in zip(sent, seen)], 1000.0),
        "submit_ms": stats.summary([q - b for b, q in zip(sent, submitted)], 1000.0),
        "result_ms": stats.summary([e - q for q, e in zip(submitted, seen)], 1000.0),
        "samples_ms": [round((e - b) * 1000.0, 3) for b, e in zip(sent, seen)],
    }
    return figures, read_hashes(harness.r, ids), sent, seen
