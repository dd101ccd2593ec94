"""Profiling, on request (`python -m bench --profile`): with every gunicorn request and the
push dispatcher sampled by pyinstrument, three more runs: one request per task from 16
clients (where contention shows), batches (where the dispatcher is the limit) and
sequential SDK round trips (where the cost of one task shows without anyone waiting on a lock).

Profiling slows everything down, so these runs' figures are reported apart from the real
ones. pyinstrument is not a project dependency: `pip install pyinstrument` first.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path

from bench import latency, throughput
from bench.config import TARGET_MODE, BenchConfig
from bench.harness import BenchPlatform, Setup
from bench.load import CompletionWatcher
from scripts.waiting import wait_until

SERVER = "gunicorn-profiled"
TOP_LINES = 40  # lines of each flat (self-time) listing copied into the report
PHASES = ("loaded", "batch", "sequential")  # in the order they run: the dispatcher's windows are numbered so


def render(session_paths: list[Path], out: Path, name: str) -> str:
    """Write the call tree and the flat self-time listing of the combined sessions; return the
    top of the flat listing for the report."""
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    sessions = [Session.load(str(p)) for p in session_paths]
    combined = sessions[0]
    for session in sessions[1:]:
        combined = Session.combine(combined, session)
    tree = ConsoleRenderer(unicode=True, color=False, time="percent_of_total",
                           processor_options={"filter_threshold": 0.01}).render(combined)
    flat = ConsoleRenderer(unicode=True, color=False, flat=True, time="percent_of_total").render(combined)
    (out / f"{name}-tree.txt").write_text(tree)
    (out / f"{name}-flat.txt").write_text(flat)
    lines = [line for line in flat.splitlines() if "%" in line and not line.startswith(("  ", " /", "/"))]
    return "\n".join(lines[:TOP_LINES])


@contextlib.contextmanager
def recording(directory: Path, setup: Setup, phase: str, window: int):
    """Sample gunicorn requests and the dispatcher for the duration of the block."""
    (directory / "recording").write_text(phase)
    os.kill(setup.dispatcher.pid, signal.SIGUSR1)  # bench.profiled: start a window
    try:
        yield
    finally:
        (directory / "recording").unlink(missing_ok=True)
        os.kill(setup.dispatcher.pid, signal.SIGUSR2)  # end the window and save it
        # Wait for the save: a USR1 arriving before this USR2 is handled would be ignored
        # (Python runs pending handlers in signal-number order), losing the next window.
        wait_until(lambda: (directory / f"dispatcher-{window}.pyisession").exists(), timeout=60,
                   message="the profiled dispatcher did not save its session")


def run(harness: BenchPlatform, watcher: CompletionWatcher, config: BenchConfig) -> dict:
    directory = harness.out / "profile"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("*.pyisession"), *directory.glob("*.txt"), directory / "recording"]:
        stale.unlink(missing_ok=True)
    harness.start_gunicorn(profile=True, name=SERVER)
    figures = {}
    with harness.setup(TARGET_MODE, config.workers, profile=directory / "dispatcher") as setup:
        # warm the profiled server's threads, imports and connections outside the windows
        throughput.run(harness, setup, watcher, replace(config, throughput_tasks=min(200, config.throughput_tasks)),
                       throughput.PER_REQUEST, server=SERVER)
        with recording(directory, setup, "loaded", window=1):
            figures["loaded"], *_ = throughput.run(harness, setup, watcher, config, throughput.PER_REQUEST,
                                                   server=SERVER)
        with recording(directory, setup, "batch", window=2):
            figures["batch"], *_ = throughput.run(harness, setup, watcher, config, throughput.BATCH, server=SERVER)
        with recording(directory, setup, "sequential", window=3):
            figures["sequential"], *_ = latency.run(harness, setup, config.latency_round_trips, config.run_timeout,
                                                    server=SERVER)
    harness.servers[SERVER].stop(timeout=60)  # the workers save their sessions on the way out
    top = {}
    for n, phase in enumerate(PHASES, start=1):
        web = sorted(directory.glob(f"web-{phase}-*.pyisession"))
        if web:
            title = f"web, {phase}: gunicorn requests, flat self time (wall clock)"
            top[title] = render(web, directory, f"web-{phase}")
        dispatcher = directory / f"dispatcher-{n}.pyisession"
        if dispatcher.exists():
            top[f"dispatcher, {phase}: flat self time (wall clock, idle included)"] = render(
                [dispatcher], directory, f"dispatcher-{phase}")
    loaded, batch, sequential = figures["loaded"], figures["batch"], figures["sequential"]
    return {"note": f"Under the profilers (which slow everything down), push mode: {loaded['completed']} tasks one "
                    f"request per task from {config.clients} clients at {loaded['tasks_per_s']:.0f} tasks/s, "
                    f"{batch['completed']} in batches at {batch['tasks_per_s']:.0f} tasks/s, then "
                    f"{sequential['round_trips']} sequential round trips at p50 "
                    f"{sequential['round_trip_ms']['p50']:.1f} ms. Full call trees and flat listings: "
                    f"profile/*-tree.txt and profile/*-flat.txt.",
            "loaded": loaded, "batch": batch, "top": top,
            "sequential": {k: v for k, v in sequential.items() if k != "samples_ms"}}
