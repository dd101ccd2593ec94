"""The user-path client: the same workloads written with each system's own client, run as a
program of its own (as a user's would be), so nothing else in the bench competes with it.

    python -m bench.userpath_client SYSTEM SIZES_JSON [URL]

SYSTEM is `platform` (FaaSClient and FaaSExecutor against URL), `celery` (the app in
bench.compare_tasks, broker and backend from BENCH_COMPARE_REDIS_URL) or `ray` (a local
Ray started here with 2 CPUs). Prints one JSON object: per workload, one figure per pass.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from bench import stats

WARM_UP = 20  # tasks through every system before anything is timed


class Platform:
    name = "this platform (push, 2 processes)"

    def __init__(self, url: str):
        from bench.tasks import noop, noop_with, pause
        from functions.client import FaaSClient, FaaSExecutor

        self.noop, self.noop_with, self.pause = noop, noop_with, pause
        self.client = FaaSClient(url, token="")
        self.executor = FaaSExecutor(self.client)
        self.function_id = self.client.register(noop)

    def executor_submit_result(self, n: int) -> None:
        futures = [self.executor.submit(self.noop) for _ in range(n)]
        for future in futures:
            future.result()

    def map(self, n: int) -> None:
        list(self.executor.map(self.noop_with, range(n)))

    def submit_then_result(self, n: int) -> None:
        ids = [self.client.submit(self.function_id) for _ in range(n)]
        for task_id in ids:
            self.client.result(task_id)

    def round_trip(self) -> None:
        self.client.call(self.function_id)

    def sleeps(self, count: int, seconds: float) -> None:
        list(self.executor.map(self.pause, [seconds] * count))

    def close(self) -> None:
        self.executor.shutdown()
        self.client.close()


class Celery:
    name = "Celery (prefork 2, Redis)"

    def __init__(self, url: str = ""):
        from celery import group

        from bench import compare_tasks

        self.tasks, self.group = compare_tasks, group

    def executor_submit_result(self, n: int) -> None:
        for result in [self.tasks.noop.delay() for _ in range(n)]:
            result.get()

    def map(self, n: int) -> None:
        # interval: the look-up interval for results not heard of on the result channel (default 0.5 s)
        self.group(self.tasks.noop_with.s(i) for i in range(n)).apply_async().get(interval=0.01)

    submit_then_result = executor_submit_result  # Celery's plain client is its futures

    def round_trip(self) -> None:
        self.tasks.noop.delay().get()

    def sleeps(self, count: int, seconds: float) -> None:
        self.group(self.tasks.pause.s(seconds) for _ in range(count)).apply_async().get(interval=0.01)

    def close(self) -> None:
        pass


class Ray:
    name = "Ray (local, 2 CPUs)"

    def __init__(self, url: str = ""):
        import ray

        from bench.tasks import noop, noop_with, pause

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.ray = ray
        self.noop, self.noop_with, self.pause = ray.remote(noop), ray.remote(noop_with), ray.remote(pause)

    def executor_submit_result(self, n: int) -> None:
        self.ray.get([self.noop.remote() for _ in range(n)])

    def map(self, n: int) -> None:
        self.ray.get([self.noop_with.remote(i) for i in range(n)])

    def submit_then_result(self, n: int) -> None:
        for ref in [self.noop.remote() for _ in range(n)]:
            self.ray.get(ref)

    def round_trip(self) -> None:
        self.ray.get(self.noop.remote())

    def sleeps(self, count: int, seconds: float) -> None:
        self.ray.get([self.pause.remote(seconds) for _ in range(count)])

    def close(self) -> None:
        self.ray.shutdown()


SYSTEMS = {"platform": Platform, "celery": Celery, "ray": Ray}


def timed(fn, *args) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def threaded(system, n: int, threads: int) -> float:
    """`n` tasks from `threads` threads, each submitting its share and then fetching each result."""
    shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    errors, start = [], threading.Barrier(threads + 1)

    def work(share: int) -> None:
        start.wait(60)
        try:
            system.submit_then_result(share)
        except Exception as exc:  # recorded: the run is then reported as failed
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=work, args=(s,)) for s in shares]
    for t in workers:
        t.start()
    start.wait(60)
    began = time.perf_counter()
    for t in workers:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return time.perf_counter() - began


def run(system, sizes: dict) -> dict:
    n, passes = sizes["tasks"], sizes["passes"]
    system.executor_submit_result(WARM_UP)
    out = {key: [] for key in ("executor_tps", "map_tps", "plain_tps", "threads_tps", "sleep_ratio")}
    for _ in range(passes):
        out["executor_tps"].append(n / timed(system.executor_submit_result, n))
        out["map_tps"].append(n / timed(system.map, n))
        out["plain_tps"].append(n / timed(system.submit_then_result, n))
        out["threads_tps"].append(n / threaded(system, n, sizes["threads"]))
        ideal = sizes["sleep_count"] * sizes["sleep_seconds"] / sizes["processes"]
        out["sleep_ratio"].append(timed(system.sleeps, sizes["sleep_count"], sizes["sleep_seconds"]) / ideal)
    samples = [timed(system.round_trip) for _ in range(sizes["round_trips"])]
    out["round_trip_ms"] = stats.summary(samples, 1000.0)
    return out


def main(argv: list[str]) -> int:
    name, sizes = argv[0], json.loads(argv[1])
    system = SYSTEMS[name](*argv[2:3])
    try:
        figures = run(system, sizes)
    finally:
        system.close()
    print(json.dumps({"system": system.name, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
