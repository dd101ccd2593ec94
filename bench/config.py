"""How big each part of the suite is, per level: full (`make bench`), quick (`QUICK=1`) and
smoke (the test suite's one pass). Every level runs the same code; only the counts differ."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MODES = ("local", "pull", "push")
TARGET_MODE = "push"  # the targets are stated for push mode with 2 worker processes


@dataclass(frozen=True)
class BenchConfig:
    level: str
    throughput_tasks: int  # no-op tasks per throughput run
    clients: int  # concurrent clients for one-request-per-task
    batch_size: int  # calls per /execute_batch request
    latency_round_trips: int  # sequential submit + long-poll round trips per mode
    scaling_processes: tuple[int, ...]
    tasks_per_process: int  # weak scaling: the work grows with the processes
    sleep_seconds: float  # the sleep task's duration
    scaling_repeats: int  # runs per weak-scaling point; the median is reported
    burst_tasks: int  # memory: tasks queued at once
    burst_batch: int  # calls per request while queueing the burst
    floor_samples: int  # round trips per floor measurement
    daphne: bool  # also measure one-request-per-task and the floor through daphne (ASGI)
    userpath_passes: int = 1  # passes of each user-path workload per system; the median is reported
    workers: int = 2  # worker processes for throughput, latency and memory
    modes: tuple[str, ...] = MODES
    run_timeout: float = 180.0  # seconds any single run may take before it is recorded as unfinished
    scaleout: bool = True  # worker hosts in network namespaces (bench/scaleout.py); needs root

    def as_dict(self) -> dict:
        return asdict(self)


LEVELS = {
    "full": BenchConfig("full", throughput_tasks=2000, clients=16, batch_size=250, latency_round_trips=300,
                        scaling_processes=(1, 2, 4, 8), tasks_per_process=10, sleep_seconds=0.1,
                        scaling_repeats=3, burst_tasks=10_000, burst_batch=1000, floor_samples=1000, daphne=True,
                        userpath_passes=3),
    "quick": BenchConfig("quick", throughput_tasks=400, clients=16, batch_size=100, latency_round_trips=100,
                         scaling_processes=(1, 2, 4, 8), tasks_per_process=10, sleep_seconds=0.1,
                         scaling_repeats=1, burst_tasks=1000, burst_batch=500, floor_samples=100, daphne=True,
                         run_timeout=60.0),
    "smoke": BenchConfig("smoke", throughput_tasks=32, clients=4, batch_size=16, latency_round_trips=10,
                         scaling_processes=(1, 2), tasks_per_process=2, sleep_seconds=0.05,
                         scaling_repeats=1, burst_tasks=100, burst_batch=50, floor_samples=20, daphne=True,
                         run_timeout=60.0, scaleout=False),
}
