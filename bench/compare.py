"""The established Python task queues on the same machine, with the same workload: RQ and Celery.

Each competitor gets its own fresh redis-server (scripts.redis_server.RedisServer) and two worker
processes on this machine, started the way their documentation starts them, with their defaults:

- RQ: two `rq worker` processes (the default Worker class, which forks a work horse per job),
  and again with `--worker-class rq.worker.SimpleWorker` (no fork; runs the job in the worker);
- Celery: `celery -A bench.compare_tasks worker --concurrency 2 --pool prefork` (one main
  process, two pool processes), Redis as broker and as result backend.

The workloads mirror the suite's: (a) throughput, N no-op tasks enqueued one call per task from
`clients` threads, makespan from the first enqueue to the last result seen; (b) the same N with
the library's native batch enqueue (RQ `Queue.enqueue_many`, Celery `group`), `batch_size` per
call, from one client; (c) latency, sequential enqueue + wait for the result.

Completion is observed through each library's own result API, never by polling at an interval:
RQ `Job.latest_result(timeout=...)` (a blocking XREAD on the job's result stream) and Celery
`AsyncResult.get()` / `GroupResult.get()` (the Redis backend's pub/sub result consumer). Each
client thread waits for its own tasks, in the order it enqueued them, after enqueueing them.

A competitor that fails to start or to run is recorded with its error; nothing here raises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import procstat, stats
from bench.config import BenchConfig
from scripts.redis_server import RedisServer
from scripts.stack import REPO
from scripts.waiting import wait_until

READY_TIMEOUT = 60.0  # seconds for a competitor's workers to come up
RESULT_TIMEOUT = 30.0  # seconds one latency round trip may wait for its result
WARM_UP_TASKS = 8
BATCH_INTERVAL = 0.01  # seconds: Celery GroupResult.get's look-up interval (its default is 0.5)


@dataclass
class Workers:
    """Worker processes this module started, each in its own session; stopped by process group."""

    logs: Path
    popens: list[subprocess.Popen] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = self.logs / f"compare-{name}-{len(self.popens)}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.popens.append(popen)
        self.files.append(log)
        return popen

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.popens)

    def output(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in self.files if f.exists())

    def stop(self, timeout: float = 15.0) -> None:
        for p in self.popens:
            _killpg(p, signal.SIGTERM)
        end = time.monotonic() + timeout
        for p in self.popens:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p, signal.SIGKILL)  # what is left of the group (work horses, pool processes)
            if p.poll() is None:
                p.wait(5)


def _killpg(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def environment(redis_url: str) -> dict:
    from bench.compare_tasks import REDIS_URL_ENV

    env = dict(os.environ)
    env[REDIS_URL_ENV] = redis_url
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def bin_path(name: str) -> str:
    """The console script installed beside this interpreter (the virtualenv's)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# --- one competitor: how to start it, enqueue and wait -------------------------------------------------


class RQ:
    def __init__(self, worker_class: str | None = None):
        self.worker_class = worker_class
        self.system = "RQ" + (" (SimpleWorker, no fork)" if worker_class else " (default Worker, fork per job)")
        self.setup = ("2 × `rq worker`" + (f" -w {worker_class}" if worker_class else "")
                      + ", RQ defaults otherwise")
        self.batch_api = "Queue.enqueue_many"
        self.result_api = "Job.latest_result(timeout=…) (blocking XREAD on the job's result stream)"
        self.url = ""

    def start(self, workers: Workers, url: str) -> None:
        self.url = url
        argv = [bin_path("rq"), "worker", "--url", url]
        if self.worker_class:
            argv += ["--worker-class", self.worker_class]
        for i in range(2):
            workers.spawn(f"rq{'-simple' if self.worker_class else ''}-{i}", argv + ["default"], environment(url))
        from rq import Worker

        conn = redis.Redis.from_url(url)
        try:
            wait_until(lambda: not workers.alive() or len(Worker.all(connection=conn)) >= 2, timeout=READY_TIMEOUT,
                       message=f"rq workers did not register:\n{workers.output()}")
        finally:
            conn.close()
        if not workers.alive():
            raise RuntimeError(f"an rq worker exited:\n{workers.output()}")

    def client(self):
        from rq import Queue

        conn = redis.Redis.from_url(self.url)
        return conn, Queue("default", connection=conn)

    def close(self, client) -> None:
        client[0].close()

    def enqueue(self, client):
        from bench.tasks import noop

        return client[1].enqueue(noop)

    def enqueue_batch(self, client, count: int) -> list:
        from rq import Queue

        from bench.tasks import noop

        return client[1].enqueue_many([Queue.prepare_data(noop) for _ in range(count)])

    def wait(self, client, handle, deadline: float) -> bool:
        from rq.results import Result

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            result = handle.latest_result(timeout=max(1, min(int(left), 30)))
            if result is not None:
                return result.type == Result.Type.SUCCESSFUL

    def wait_batch(self, client, handle, deadline: float) -> list[tuple[bool, float]]:
        return [(self.wait(client, job, deadline), time.time()) for job in handle]


class CeleryQueue:
    system = "Celery (prefork, concurrency 2)"
    setup = "`celery -A bench.compare_tasks worker --concurrency 2 --pool prefork`, Celery defaults otherwise"
    batch_api = "group(...).apply_async(), GroupResult.get(interval=0.01)"
    result_api = "AsyncResult.get() / GroupResult.get() (Redis backend, pub/sub result consumer)"

    def __init__(self):
        self.app = None

    def start(self, workers: Workers, url: str) -> None:
        from bench.compare_tasks import REDIS_URL_ENV

        os.environ[REDIS_URL_ENV] = url  # before the app is first used in this process
        from bench import compare_tasks

        self.app = compare_tasks.app
        self.app.conf.update(broker_url=url, result_backend=url)
        workers.spawn("celery", [bin_path("celery"), "-A", "bench.compare_tasks", "worker", "--concurrency", "2",
                                 "--pool", "prefork", "--loglevel", "INFO", "-n", "bench@%h"], environment(url))
        wait_until(lambda: not workers.alive() or " ready." in workers.output(tail=100_000), timeout=READY_TIMEOUT,
                   message=f"celery worker did not start:\n{workers.output()}")
        if not workers.alive():
            raise RuntimeError(f"the celery worker exited:\n{workers.output()}")

    def client(self):
        return None

    def close(self, client) -> None:
        pass

    def enqueue(self, client):
        from bench.compare_tasks import noop

        return noop.delay()

    def enqueue_batch(self, client, count: int):
        from celery import group

        from bench.compare_tasks import noop

        return group(noop.s() for _ in range(count)).apply_async()

    def wait(self, client, handle, deadline: float) -> bool:
        handle.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
        return handle.successful()

    def wait_batch(self, client, handle, deadline: float) -> list[tuple[bool, float]]:
        # interval: how often GroupResult.get looks up results it has not heard of on the
        # result channel; its default 0.5 s would round every group's wait up to half a second.
        handle.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False, interval=BATCH_INTERVAL)
        seen = time.time()
        return [(r.successful(), seen) for r in handle.results]


# --- the three workloads -----------------------------------------------------------------------------


def machine_cpu() -> float:
    return procstat.machine_seconds()["processes"]


def per_call(system, count: int, clients: int, deadline: float) -> dict:
    """`count` tasks, one enqueue call each, from `clients` threads; each thread then waits for its own."""
    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    firsts, lasts, enq_ends, done, errors = [], [], [], [0], []
    lock, start = threading.Lock(), threading.Barrier(clients)

    def client_thread(share: int) -> None:
        client = system.client()
        try:
            start.wait(30)
            began = time.time()
            handles = [system.enqueue(client) for _ in range(share)]
            enqueued = time.time()
            ok, last = 0, enqueued
            for handle in handles:
                if system.wait(client, handle, deadline):
                    ok += 1
                last = time.time()
            with lock:
                firsts.append(began), enq_ends.append(enqueued), lasts.append(last)
                done[0] += ok
        except Exception as exc:  # recorded, never hidden
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            system.close(client)

    cpu_before = machine_cpu()
    threads = [threading.Thread(target=client_thread, args=(s,), daemon=True) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 5))
    if any(t.is_alive() for t in threads):
        errors.append("a client thread was still running at the run's time limit")
    cpu = machine_cpu() - cpu_before
    makespan = (max(lasts) - min(firsts)) if firsts else float("nan")
    return {"tasks": count, "clients": clients, "completed": done[0], "makespan_s": makespan,
            "tasks_per_s": stats.rate(done[0], makespan) if firsts else float("nan"),
            "enqueue_per_s": stats.rate(count, max(enq_ends) - min(firsts)) if firsts else float("nan"),
            "machine_cpu_ms_per_task": cpu * 1000.0 / max(1, done[0]), "errors": errors}


def batched(system, count: int, batch_size: int, deadline: float) -> dict:
    """`count` tasks in native batch calls of `batch_size`, from one client; then wait for every result."""
    client, handles, errors, ok, last = system.client(), [], [], 0, None
    cpu_before = machine_cpu()
    began = time.time()
    try:
        for first in range(0, count, batch_size):
            handles.append(system.enqueue_batch(client, min(batch_size, count - first)))
        for handle in handles:
            for success, seen in system.wait_batch(client, handle, deadline):
                ok += success
                last = seen
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        system.close(client)
    cpu = machine_cpu() - cpu_before
    makespan = (last - began) if last else float("nan")
    return {"tasks": count, "batch_size": batch_size, "completed": ok, "makespan_s": makespan,
            "tasks_per_s": stats.rate(ok, makespan) if last else float("nan"),
            "machine_cpu_ms_per_task": cpu * 1000.0 / max(1, ok), "errors": errors}


def latency(system, count: int, deadline: float) -> dict:
    """`count` sequential round trips: enqueue one no-op, wait for its result."""
    client, samples, errors = system.client(), [], []
    try:
        system.wait(client, system.enqueue(client), time.monotonic() + RESULT_TIMEOUT)  # warm connection
        for _ in range(count):
            if time.monotonic() >= deadline:
                errors.append(f"stopped at the run's time limit after {len(samples)} of {count} round trips")
                break
            began = time.perf_counter()
            handle = system.enqueue(client)
            if not system.wait(client, handle, min(deadline, time.monotonic() + RESULT_TIMEOUT)):
                errors.append("a round trip did not succeed")
                break
            samples.append(time.perf_counter() - began)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        system.close(client)
    return {"round_trips": len(samples), "round_trip_ms": stats.summary(samples, 1000.0), "errors": errors}


def warm_up(system) -> None:
    """A few tasks through every process first, outside the measured window."""
    client = system.client()
    try:
        handles = [system.enqueue(client) for _ in range(WARM_UP_TASKS)]
        deadline = time.monotonic() + READY_TIMEOUT
        if not all(system.wait(client, h, deadline) for h in handles):
            raise RuntimeError("warm-up tasks did not succeed")
    finally:
        system.close(client)


def run_one(system, config: BenchConfig, logs: Path, say) -> dict:
    entry = {"system": system.system, "setup": system.setup, "batch_api": system.batch_api,
             "result_api": system.result_api, "throughput": None, "batch": None, "latency": None, "errors": []}
    server, workers = None, Workers(logs)
    try:
        server = RedisServer().start()
        say(f"compare {system.system}: starting workers")
        system.start(workers, server.url)
        warm_up(system)
        say(f"compare {system.system}: throughput, {config.throughput_tasks} tasks one call each")
        entry["throughput"] = per_call(system, config.throughput_tasks, config.clients,
                                       time.monotonic() + config.run_timeout)
        say(f"compare {system.system}: batched, {config.batch_size} per call")
        entry["batch"] = batched(system, config.throughput_tasks, config.batch_size,
                                 time.monotonic() + config.run_timeout)
        say(f"compare {system.system}: latency, {config.latency_round_trips} round trips")
        entry["latency"] = latency(system, config.latency_round_trips, time.monotonic() + config.run_timeout)
    except Exception as exc:  # a competitor that fails is reported, the suite goes on
        entry["errors"].append(f"{type(exc).__name__}: {exc}")
        entry["traceback"] = traceback.format_exc()[-4000:]
        say(f"compare {system.system} FAILED: {type(exc).__name__}: {exc}")
    finally:
        workers.stop()
        if server is not None:
            server.cleanup()
    return entry


def run(config: BenchConfig, out: Path, say=lambda text: None) -> dict:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    versions = {}
    for name in ("rq", "celery", "kombu", "redis"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception as exc:
            versions[name] = f"not installed ({type(exc).__name__})"
    systems = []
    for system_factory in (lambda: RQ(), lambda: RQ("rq.worker.SimpleWorker"), lambda: CeleryQueue()):
        try:
            system = system_factory()
        except Exception as exc:
            systems.append({"system": "?", "errors": [f"{type(exc).__name__}: {exc}"]})
            continue
        systems.append(run_one(system, config, logs, say))
    return {"versions": versions, "workers": 2, "tasks": config.throughput_tasks, "clients": config.clients,
            "batch_size": config.batch_size, "latency_round_trips": config.latency_round_trips, "systems": systems}
