"""The user's path, side by side: the same workloads through each system's own client, in
one run, reported with the platform's ratio to Celery and to Ray.

What a user's program does, nothing more: the platform through `FaaSClient` and
`FaaSExecutor` (results fetched through the REST API, push mode, 2 worker processes,
gunicorn), Celery through `delay`/`get` and `group` (prefork, concurrency 2, Redis broker
and backend), Ray through `remote`/`ray.get` (a local Ray with 2 CPUs). Each system's
client runs as a program of its own (bench/userpath_client.py); Celery and Ray each get
the machine after the platform is stopped, as in bench/compare.py. Each figure is the
median of `passes` passes with its range.

A system that cannot be started or installed is recorded with its error; nothing raises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench import compare
from bench.config import BenchConfig
from bench.harness import BenchPlatform
from scripts.redis_server import RedisServer
from scripts.stack import REPO

FIGURES = {  # key: (label, unit, better)
    "executor_tps": ("`FaaSExecutor` submit × N, then each `result()` / Celery `delay` + `get` / Ray `remote` + "
                     "`ray.get(list)`", "tasks/s", "higher"),
    "map_tps": ("`FaaSExecutor.map` / Celery `group(...).get()` / Ray `ray.get([...])`", "tasks/s", "higher"),
    "plain_tps": ("`client.submit` × N, then `client.result` per task / Celery the same / Ray `ray.get` per ref",
                  "tasks/s", "higher"),
    "threads_tps": ("the same from 16 client threads (one shared client)", "tasks/s", "higher"),
    "round_trip_p50": ("round trip p50: `client.call` / `delay().get()` / `ray.get(f.remote())`", "ms", "lower"),
    "round_trip_p99": ("round trip p99", "ms", "lower"),
    "sleep_ratio": ("20 × sleep(0.1) on 2 processes: makespan / ideal", "×", "lower"),
}
SYSTEMS = ("platform", "celery", "ray")
CLIENT_GRACE = 120.0  # seconds beyond the runs' own limit before a client program is stopped


def sizes(config: BenchConfig) -> dict:
    return {"tasks": config.throughput_tasks, "passes": config.userpath_passes, "threads": config.clients,
            "sleep_count": 20, "sleep_seconds": 0.1, "processes": config.workers,
            "round_trips": config.latency_round_trips}


def client(system: str, config: BenchConfig, logs: Path, env: dict | None = None, url: str = "") -> dict:
    """Run the client program for `system`; its figures, or {"errors": [...]}. The program
    runs in its own session and is stopped by its process group (Ray's processes too)."""
    argv = [sys.executable, "-m", "bench.userpath_client", system, json.dumps(sizes(config))] + ([url] if url else [])
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    log = logs / f"userpath-{system}.log"
    with open(log, "wb") as stderr:
        popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                 start_new_session=True)
    try:
        out, _ = popen.communicate(timeout=config.run_timeout * 4 + CLIENT_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()
        return {"errors": [f"the {system} client did not finish in time"]}
    finally:
        _kill_group(popen.pid)  # whatever it left (Ray's raylet and workers if it died)
    if popen.returncode != 0:
        return {"errors": [f"the {system} client exited with {popen.returncode}: "
                           f"{log.read_text(errors='replace')[-1500:]}"]}
    return json.loads(out)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def platform(harness: BenchPlatform, config: BenchConfig) -> dict:
    with harness.setup("push", config.workers):
        return client("platform", config, harness.out / "logs", url=harness.urls["gunicorn"])


def celery(config: BenchConfig, logs: Path) -> dict:
    server, workers = None, compare.Workers(logs)
    try:
        server = RedisServer().start()
        compare.CeleryQueue().start(workers, server.url)
        return client("celery", config, logs, env=compare.environment(server.url))
    except Exception as exc:
        return {"errors": [f"{type(exc).__name__}: {exc}"]}
    finally:
        workers.stop()
        if server is not None:
            server.cleanup()


def ray(config: BenchConfig, logs: Path) -> dict:
    try:
        import ray as _  # noqa: F401  (only to say so when it is not installed)
    except ImportError as exc:
        return {"errors": [f"Ray is not installed here: {exc}"]}
    return client("ray", config, logs)


def summarize(raw: dict) -> dict:
    """Per system: median, min, max of each figure (round trips as measured once)."""
    out = {"errors": list(raw.get("errors", [])), "name": raw.get("system")}
    for key in ("executor_tps", "map_tps", "plain_tps", "threads_tps", "sleep_ratio"):
        values = sorted(raw.get(key) or [])
        out[key] = {"median": values[len(values) // 2], "min": values[0], "max": values[-1]} if values else None
    trip = raw.get("round_trip_ms") or {}
    for key, q in (("round_trip_p50", "p50"), ("round_trip_p99", "p99")):
        out[key] = {"median": trip[q], "min": trip[q], "max": trip[q]} if trip.get("n") else None
    return out


def ratios(systems: dict) -> dict:
    """The platform's figure divided by each peer's (for "lower" figures too: < 1 is better there)."""
    ours = systems.get("platform") or {}
    out = {}
    for peer in ("celery", "ray"):
        theirs = systems.get(peer) or {}
        out[peer] = {key: (ours[key]["median"] / theirs[key]["median"]
                           if ours.get(key) and theirs.get(key) and theirs[key]["median"] else None)
                     for key in FIGURES}
    return out
