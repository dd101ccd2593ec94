"""Latency: sequential no-op round trips through the SDK, submit then the /result long-poll,
from a client process of its own (bench.latency_client)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import stats
from bench.harness import BenchPlatform, Setup
from bench.load import read_hashes
from scripts.stack import REPO

EXIT_GRACE = 60.0  # seconds the client process may take beyond the run's own time limit
SUBMIT_THEN_RESULT = "submit + result"  # two requests: submit, then the /result long-poll (the target's)
CALL = "call"  # one request: POST /execute_function?wait=


def run(harness: BenchPlatform, setup: Setup, count: int, run_timeout: float, server: str = "gunicorn",
        style: str = SUBMIT_THEN_RESULT) -> tuple[dict, list[dict], list, list]:
    """`count` round trips, one at a time; returns figures and per-task rows/times for the breakdown."""
    argv = [sys.executable, "-m", "bench.latency_client", harness.urls[server], harness.functions["noop"],
            str(count), str(run_timeout), "call" if style == CALL else "submit"]
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=run_timeout + EXIT_GRACE)
        trips = json.loads(done.stdout) if done.returncode == 0 else None
        failure = None if trips else f"the client exited with {done.returncode}: {done.stderr[-2000:]}"
    except (subprocess.TimeoutExpired, ValueError) as exc:
        trips, failure = None, f"{type(exc).__name__}: {exc}"
    if trips is None:
        trips = {"ids": [], "sent": [], "submitted": [], "seen": [], "errors": [failure]}
    ids, sent, submitted, seen = trips["ids"], trips["sent"], trips["submitted"], trips["seen"]
    figures = {
        "mode": setup.mode, "style": style, "processes": setup.processes, "round_trips": len(ids),
        "errors": trips["errors"], "round_trip_ms": stats.summary([e - b for b, e in zip(sent, seen)], 1000.0),
        "submit_ms": stats.summary([q - b for b, q in zip(sent, submitted) if q is not None], 1000.0),
        "result_ms": stats.summary([e - q for q, e in zip(submitted, seen) if q is not None], 1000.0),
        "samples_ms": [round((e - b) * 1000.0, 3) for b, e in zip(sent, seen)],
    }
    return figures, read_hashes(harness.r, ids), sent, seen
