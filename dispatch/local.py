"""Local mode: a pool of worker processes inside the dispatcher."""

from __future__ import annotations

import os
import socket
import time

from dispatch.core import Dispatcher
from workers import environment, protocol
from workers.pool import ProcessPool
from workers.recycling import ChildLimits


class LocalDispatcher(Dispatcher):
    mode = "local"

    def setup(self) -> None:
        limits = ChildLimits(self.config.max_tasks_per_child, self.config.max_memory_per_child)
        self.pool = ProcessPool(self.config.workers, max_result_bytes=self.config.max_result_bytes, limits=limits)
        self.pool.start()
        self.identity = f"local-{socket.gethostname()}-{os.getpid()}"
        self.next_heartbeat = 0.0
        self.worker_seen(self.identity, protocol.WorkerInfo(self.config.workers, socket.gethostname(), os.getpid()))

    def teardown(self) -> None:
        self.pool.close()
        self.worker_state(self.identity, alive=False, busy=0)

    def capacity(self) -> int:
        return self.pool.free

    def cannot_run(self, needs: tuple[str, ...]) -> str | None:
        """The pool's children are this interpreter: what it cannot import, they cannot."""
        missing = environment.missing(needs, environment.describe()["modules"])
        return environment.sentence(missing, "this dispatcher's local workers cannot import") if missing else None

    def send(self, tasks: list[protocol.Task]) -> dict[str, str]:
        for task in tasks:
            self.pool.submit(task)
        self.worker_state(self.identity, busy=self.pool.busy)
        return {task.task_id: self.identity for task in tasks}

    def poll_items(self) -> list:
        return self.pool.fds()

    def on_ready(self, ready: set, now: float) -> None:
        self.collect()

    def tick(self, now: float) -> None:
        if self.pool.next_deadline() is not None:
            self.collect()
        if now >= self.next_heartbeat:  # the pool lives in this process: alive while we loop
            self.next_heartbeat = now + self.config.heartbeat_interval
            self.worker_state(self.identity, busy=self.pool.busy, last_heartbeat=time.time())

    def collect(self) -> None:
        results = self.pool.collect()
        reports = self.pool.take_progress()
        if reports:
            self.report_progress([(t, f, m) for t, (f, m) in reports.items()])
        if results:
            self.accept_results(results)
            self.worker_state(self.identity, busy=self.pool.busy)

    def next_tick(self, now: float) -> float:
        deadline = self.pool.next_deadline()
        return now + 1.0 if deadline is None else min(now + 1.0, deadline)

    def cancel_running(self, task_id: str, identity: str | None) -> None:
        self.pool.cancel(task_id)

    def on_overdue(self, task_id: str, identity: str | None) -> None:
        self.pool.cancel(task_id)
