"""Scale-out: tasks per second against worker hosts (1, 2, 3) and dispatchers (1, 2), on
the layout `make cluster` starts (scripts/cluster.py: PostgreSQL, Redis, gunicorn, CURVE
dispatchers, each worker host in a network namespace of its own).

Weak scaling, as the per-process section measures it: each host brings `processes` worker
processes and the work grows with them (`tasks_per_process` tasks per process), queued with
/execute_batch so submission is not what is measured; the makespan runs from the first
request to the last completion heard; the median of `scaling_repeats` runs per point.
Every host is a namespace on the same two cores, so the sleep task shows what the platform
adds per host, and the no-op task what the shared CPU allows; neither is the speed of
separate machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench import stats, tasks
from bench.config import BenchConfig
from bench.httpclient import Connection
from bench.load import CompletionWatcher, outcome, read_hashes, submit_batches
from functions.taskstore import TaskStore
from scripts import netns
from scripts.cluster import Cluster, ClusterConfig
from workers.serialization import serialize

PROCESSES = 2  # worker processes per host, as the per-process section's target setup
HOSTS = (1, 2, 3)
DISPATCHERS = (1, 2)
NOOP_PER_PROCESS = {"full": 200, "quick": 50, "smoke": 5}  # the no-op task needs more to measure


def run(config: BenchConfig, out: Path, say: Callable[[str], None]) -> dict:
    """Every (dispatchers, hosts) point with at least one host per dispatcher; {"points": [...]}."""
    reason = netns.unavailable_reason()
    if reason:
        say(f"scale-out skipped: {reason}")
        return {"skipped": reason, "points": []}
    cluster = Cluster(ClusterConfig(hosts=0, dispatchers=0, processes=PROCESSES, workdir=out / "cluster"))
    points = []
    try:
        say("scale-out: starting PostgreSQL, Redis, web servers")
        cluster.start_services()
        watcher = CompletionWatcher(cluster.redis.url)
        store = TaskStore.connect(cluster.redis.url)
        functions = {name: register(cluster.urls["api"], name, fn)
                     for name, fn in (("noop", tasks.noop), ("pause", tasks.pause))}
        try:
            for dispatchers in DISPATCHERS:
                for hosts in (h for h in HOSTS if h >= dispatchers):
                    cluster.start_fleet(dispatchers, hosts)
                    try:
                        warm_up(cluster, watcher, functions["noop"], hosts * PROCESSES)
                        for kind in ("noop", "sleep"):
                            runs = [measure(cluster, store, watcher, functions, config, kind, dispatchers, hosts)
                                    for _ in range(config.scaling_repeats)]
                            point = median_run(runs)
                            say(f"scale-out {dispatchers} dispatcher(s), {hosts} host(s), {kind}: "
                                f"{point['tasks_per_s']:.0f} tasks/s")
                            points.append(point)
                    finally:
                        cluster.stop_fleet()
        finally:
            watcher.close()
            store.close()
    finally:
        cluster.stop()
    add_efficiency(points)
    return {"points": points, "processes_per_host": PROCESSES,
            "database": "PostgreSQL 15 (fsync on)", "redis": "append-only, fsync every second"}


def register(url: str, name: str, fn) -> str:
    conn = Connection(url)
    try:
        status, body = conn.json("POST", "/register_function", {"name": name, "payload": serialize(fn)})
    finally:
        conn.close()
    if status != 201:
        raise RuntimeError(f"register_function answered {status}: {body}")
    return body["function_id"]


def warm_up(cluster: Cluster, watcher: CompletionWatcher, function_id: str, processes: int) -> None:
    """A few no-op tasks through every process first: connections, caches and imports made."""
    conn = Connection(cluster.urls["api"])
    try:
        status, body = conn.json("POST", "/execute_batch", {"function_id": function_id,
                                                            "payloads": [serialize(((), {}))] * (4 * processes)})
    finally:
        conn.close()
    if status != 201:
        raise RuntimeError(f"execute_batch answered {status}: {body}")
    if not watcher.wait(body["task_ids"], timeout=60):
        raise RuntimeError("the warm-up tasks did not finish within 60 s")


def measure(cluster: Cluster, store: TaskStore, watcher: CompletionWatcher, functions: dict, config: BenchConfig,
            kind: str, dispatchers: int, hosts: int) -> dict:
    processes = hosts * PROCESSES
    if kind == "noop":
        count, function, payload = processes * NOOP_PER_PROCESS[config.level], "noop", serialize(((), {}))
    else:
        count, function = processes * config.tasks_per_process, "pause"
        payload = serialize(((config.sleep_seconds,), {}))

    def submit(conn: Connection, chunk: list[str]) -> list[str]:
        status, body = conn.json("POST", "/execute_batch", {"function_id": functions[function], "payloads": chunk})
        if status != 201:
            raise RuntimeError(f"execute_batch answered {status}: {body}")
        return body["task_ids"]

    watcher.reset()
    deadline = time.monotonic() + config.run_timeout
    submitted = submit_batches(cluster.urls["api"], submit, [payload] * count, config.batch_size, deadline)
    heard = watcher.wait(submitted.task_ids, timeout=max(1.0, deadline - time.monotonic()))
    figures = outcome(submitted, read_hashes(store, submitted.task_ids),
                      watcher.last_seen(submitted.task_ids), count)
    if not heard:
        figures["errors"].append("not every completion was heard before the run's time limit")
    ideal = config.tasks_per_process * config.sleep_seconds if kind == "sleep" else None
    return {"kind": kind, "dispatchers": dispatchers, "hosts": hosts, "processes": processes, "tasks": count,
            "makespan_s": figures["makespan_s"], "tasks_per_s": stats.rate(figures["completed"], figures["makespan_s"]),
            "completed": figures["completed"], "failed": figures["failed"], "ideal_s": ideal,
            "efficiency_ideal": ideal / figures["makespan_s"] if ideal and figures["makespan_s"] else None,
            "errors": figures["errors"]}


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, keeping every run's figure beside it."""
    point = dict(sorted(runs, key=lambda r: r["tasks_per_s"])[len(runs) // 2])
    point["tasks_per_s_runs"] = [r["tasks_per_s"] for r in runs]
    point["errors"] = [e for r in runs for e in r["errors"]][:5]
    return point


def add_efficiency(points: list[dict]) -> None:
    """efficiency_vs_1 = tasks/s per host against one host with one dispatcher, per kind."""
    base = {p["kind"]: p["tasks_per_s"] for p in points if p["hosts"] == 1 and p["dispatchers"] == 1}
    for p in points:
        one = base.get(p["kind"])
        p["efficiency_vs_1"] = p["tasks_per_s"] / (one * p["hosts"]) if one else None



def main(argv: list[str] | None = None) -> int:
    """`python -m bench.scaleout [--quick] [--out DIR]`: this section alone, into DIR/scaleout.md."""
    import argparse
    import sys

    from bench.config import LEVELS
    from bench.harness import dump
    from bench.scaleout_report import section

    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {"scaleout": run(LEVELS["quick" if args.quick else "full"], out,
                               lambda text: print(text, file=sys.stderr, flush=True))}
    dump(out / "scaleout.json", results)
    (out / "scaleout.md").write_text(section(results, out))
    print(f"report: {out / 'scaleout.md'}")
    return 0 if all(not p["errors"] for p in results["scaleout"].get("points", [])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
