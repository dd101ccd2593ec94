"""The suite: start the platform, run every section in order, stop everything, write the report.

A section that fails is recorded (with its error) and the suite goes on, so one problem
never hides the other figures; the report says which sections failed.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import (
    breakdown,
    compare,
    floor,
    latency,
    memory,
    procstat,
    profiling,
    scaleout,
    scaling,
    throughput,
    userpath,
)
from bench.config import TARGET_MODE, BenchConfig
from bench.harness import BenchPlatform, dump
from bench.load import CompletionWatcher


class Suite:
    def __init__(self, config: BenchConfig, out: Path, profile: bool = False, command: str = "python -m bench"):
        self.config, self.out, self.profile, self.command = config, out, profile, command
        self.began = time.monotonic()
        self.results: dict = {"meta": {}, "floor": {}, "throughput": [], "latency": [], "breakdown": [],
                              "scaling": [], "memory": {}, "compare": {}, "userpath": {}, "errors": []}

    def say(self, text: str) -> None:
        print(f"[bench {time.monotonic() - self.began:6.1f} s] {text}", file=sys.stderr, flush=True)

    def section(self, name: str, fn, *args):
        """Run one part; a failure is logged into the results instead of ending the suite."""
        try:
            return fn(*args)
        except Exception as exc:
            self.say(f"{name} FAILED: {type(exc).__name__}: {exc}")
            self.results["errors"].append({"section": name, "error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()[-4000:]})
            return None

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        config, harness = self.config, BenchPlatform(self.out)
        systems: dict = {}
        self.results["meta"] = meta(config, self.command)
        try:
            self.say("starting Redis, database and web servers")
            harness.start(daphne=config.daphne)
            self.results["meta"]["web"] = harness.web_description()
            watcher = CompletionWatcher(harness.redis_server.url)
            try:
                self.say("floor")
                self.results["floor"] = self.section("floor", floor.measure, harness.redis_server.url, harness.urls,
                                                     config.floor_samples) or {}
                for mode in config.modes:
                    self.section(f"throughput/latency {mode}", self.per_mode, harness, watcher, mode)
                for mode in config.modes:
                    for processes in config.scaling_processes:
                        self.section(f"scaling {mode} {processes}", self.scaling_point, harness, watcher, mode,
                                     processes)
                scaling.add_relative_efficiency(self.results["scaling"])
                self.say(f"user path: the platform through its own client, {config.throughput_tasks} tasks")
                systems["platform"] = self.section("user path platform", userpath.platform, harness, config)
                self.say(f"memory: burst of {config.burst_tasks} tasks")
                self.results["memory"] = self.section("memory", self.memory, harness, watcher) or {}
                if self.profile:
                    self.say("profile: one-request-per-task run under pyinstrument")
                    self.results["profile"] = self.section("profile", profiling.run, harness, watcher, config)
            finally:
                watcher.close()
        except Exception as exc:
            self.section("platform", _raise, exc)
        finally:
            self.say("stopping the platform")
            harness.close()
        if self.config.scaleout:
            self.say("scale-out: worker hosts in network namespaces, one and two dispatchers")
            self.results["scaleout"] = self.section("scale-out", scaleout.run, config, self.out, self.say) or {}
        # After the platform is stopped, so the competitors have the machine to themselves as it had.
        self.say("compared with RQ and Celery")
        self.results["compare"] = self.section("compare", compare.run, config, self.out, self.say) or {}
        logs = self.out / "logs"
        for name, run in (("celery", userpath.celery), ("ray", userpath.ray)):
            self.say(f"user path: {name} through its own client")
            systems[name] = self.section(f"user path {name}", run, config, logs)
        summaries = {name: userpath.summarize(raw or {"errors": ["not run"]}) for name, raw in systems.items()}
        self.results["userpath"] = {"sizes": userpath.sizes(config), "systems": summaries,
                                    "ratios": userpath.ratios(summaries)}
        self.results["meta"]["duration_s"] = time.monotonic() - self.began
        self.results["meta"]["load_after"] = procstat.load_average()
        return self.results

    def per_mode(self, harness: BenchPlatform, watcher: CompletionWatcher, mode: str) -> None:
        config = self.config
        with harness.setup(mode, config.workers) as setup:
            # Latency first, on the warmed but otherwise idle platform; then the load.
            for style, run in ((latency.SUBMIT_THEN_RESULT, "sequential round trips"),
                               (latency.CALL, "sequential calls, one request each")):
                self.say(f"latency {mode} ({style}): {config.latency_round_trips} round trips")
                figures, rows, sent, seen = latency.run(harness, setup, config.latency_round_trips,
                                                        config.run_timeout, style=style)
                self.results["latency"].append(figures)
                self.results["breakdown"].append({"mode": mode, "run": run,
                                                  "stages": breakdown.breakdown(rows, sent, seen)})
            for style in (throughput.PER_REQUEST, throughput.BATCH):
                self.say(f"throughput {mode} {style}: {config.throughput_tasks} tasks")
                figures, rows, submitted, seen = throughput.run(harness, setup, watcher, config, style)
                self.results["throughput"].append(figures)
                if style == throughput.PER_REQUEST:
                    self.results["breakdown"].append({"mode": mode, "run": "one request per task, 16 clients"
                                                      if config.clients == 16 else f"one request per task, "
                                                      f"{config.clients} clients",
                                                      "stages": breakdown.breakdown(rows, submitted.sent_at, seen)})
            if mode == TARGET_MODE and "daphne" in harness.urls:
                self.say(f"throughput {mode} per-request through daphne")
                figures, *_ = throughput.run(harness, setup, watcher, config, throughput.PER_REQUEST, server="daphne")
                self.results["throughput"].append(figures)

    def scaling_point(self, harness: BenchPlatform, watcher: CompletionWatcher, mode: str, processes: int) -> None:
        with harness.setup(mode, processes) as setup:
            for kind in scaling.KINDS:
                point = scaling.run_point(harness, setup, watcher, self.config, kind)
                self.say(f"scaling {mode} {processes} {kind}: {point['makespan_s']:.3f} s")
                self.results["scaling"].append(point)

    def memory(self, harness: BenchPlatform, watcher: CompletionWatcher) -> dict:
        with harness.setup(TARGET_MODE, self.config.workers) as setup:
            return memory.run(harness, setup, watcher, self.config)


def _raise(exc: Exception):
    raise exc


def meta(config: BenchConfig, command: str) -> dict:
    return {"level": config.level, "config": config.as_dict(),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "command": command, "code": code_version(),
            "load_before": procstat.load_average()}


def code_version() -> str:
    """The commit measured, and how many files differ from it (the work tree may be ahead)."""
    from scripts.stack import REPO

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown (not a git checkout)"
    return f"{commit}" + (f" + {len(dirty)} changed file(s)" if dirty else "")


def save(results: dict, out: Path) -> Path:
    path = out / "results.json"
    dump(path, results)
    return path
