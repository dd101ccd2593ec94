"""Profiling, on request (`python -m bench --profile`): one more one-request-per-task run in
push mode with every gunicorn request and the dispatcher sampled by pyinstrument.

Profiling slows both down, so this run's throughput is reported apart from the real one.
pyinstrument is not a project dependency: `pip install pyinstrument` first.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

from bench.config import TARGET_MODE, BenchConfig
from bench.harness import BenchPlatform
from bench.load import CompletionWatcher
from bench import throughput

SERVER = "gunicorn-profiled"
TOP_LINES = 30  # lines of each flat (self-time) listing copied into the report


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
    return "\n".join(flat.splitlines()[:TOP_LINES])


def run(harness: BenchPlatform, watcher: CompletionWatcher, config: BenchConfig) -> dict:
    directory = harness.out / "profile"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.pyisession"):
        stale.unlink()
    recording = directory / "recording"  # gunicorn_profile samples requests only while this exists
    recording.unlink(missing_ok=True)
    harness.start_gunicorn(profile=True, name=SERVER)
    dispatcher_session = directory / "dispatcher.pyisession"
    with harness.setup(TARGET_MODE, config.workers, profile=dispatcher_session) as setup:
        # warm the profiled server's threads, imports and connections outside the window
        throughput.run(harness, setup, watcher, replace(config, throughput_tasks=min(200, config.throughput_tasks)),
                       throughput.PER_REQUEST, server=SERVER)
        recording.touch()
        os.kill(setup.dispatcher.pid, signal.SIGUSR1)  # bench.profiled: start sampling
        try:
            figures, *_ = throughput.run(harness, setup, watcher, config, throughput.PER_REQUEST, server=SERVER)
        finally:
            recording.unlink(missing_ok=True)
            os.kill(setup.dispatcher.pid, signal.SIGUSR2)  # stop sampling and save
    harness.servers[SERVER].stop(timeout=60)  # the workers save their sessions on the way out
    top = {}
    web = sorted(directory.glob("web-*.pyisession"))
    if web:
        top["web (gunicorn workers, inside each request), flat self time"] = render(web, directory, "web")
    if dispatcher_session.exists():
        top["dispatcher (push), flat self time, wall clock incl. idle"] = render([dispatcher_session], directory,
                                                                                 "dispatcher")
    return {"note": f"A separate one-request-per-task run ({figures['completed']} tasks, push mode) under the "
                    f"profilers reached {figures['tasks_per_s']:.0f} tasks/s (slowed by profiling). Full call trees "
                    f"and flat listings: profile/*-tree.txt, profile/*-flat.txt.",
            "throughput": figures, "top": top}
