"""The platform under test: a Redis server, a fresh SQLite file, the web servers, and one
dispatcher setup (dispatcher + workers) at a time, all on free loopback ports.

Everything is started through scripts.stack, each process in its own session, and stopped
by process group; nothing outside what this module started is touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import dill

from bench import procstat
from bench.httpclient import Connection
from functions.taskstore import QueueDepth, TaskStore
from scripts.redis_server import RedisServer, free_port
from scripts.stack import REPO, Proc, Stack, endpoint_of
from scripts.waiting import wait_until
from workers.protocol import FINAL_STATUSES
from workers.serialization import encode, serialize

log = logging.getLogger(__name__)

WEB_WORKERS = 2  # gunicorn processes: one per core
WEB_THREADS = 8  # gthread threads per process: long-polls hold a thread each
GUNICORN_PROFILE_CONFIG = "python:bench.gunicorn_profile"
DISPATCHER_READY_TIMEOUT = 60.0  # seconds for a dispatcher and its workers to come up
NOOP_CALL = serialize(((), {}))  # the execute payload of a call without arguments


@dataclass
class Setup:
    """One running dispatcher and its worker program (None in local mode)."""

    mode: str
    processes: int
    dispatcher: Proc
    worker: Proc | None = None
    profile: Path | None = None

    def cpu(self, table: dict[int, procstat.ProcInfo]) -> dict[str, float]:
        """CPU seconds so far: the dispatcher process itself, and every worker process."""
        dispatcher = procstat.cpu_seconds(self.dispatcher.pid)
        if self.worker is None:  # local mode: the pool children are the dispatcher's
            workers = procstat.tree_cpu(self.dispatcher.pid, table, exclude=(self.dispatcher.pid,))
        else:
            workers = procstat.tree_cpu(self.worker.pid, table)
        return {"dispatcher": dispatcher, "workers": workers}


@dataclass
class BenchPlatform:
    out: Path
    servers: dict[str, Proc] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    redis_server: RedisServer | None = None
    stack: Stack | None = None
    r: TaskStore | None = None
    functions: dict[str, str] = field(default_factory=dict)

    # --- whole-platform lifecycle ------------------------------------------------------------

    def start(self, daphne: bool) -> None:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.redis_server = RedisServer().start()
        database = self.out / "bench.sqlite3"
        for stale in (database, database.with_suffix(".sqlite3-wal"), database.with_suffix(".sqlite3-shm")):
            stale.unlink(missing_ok=True)
        self.stack = Stack(redis_url=self.redis_server.url, database_url=f"sqlite:///{database}", workdir=logs)
        self.stack.extra_env = {"FAAS_LOG_LEVEL": "WARNING", "FAAS_BENCH_PROFILE_DIR": str(self.out / "profile")}
        self.migrate()
        self.r = TaskStore.connect(self.redis_server.url)
        waits = [self.start_gunicorn(wait=False)]
        if daphne:
            waits.append(self.start_daphne(wait=False))
        for wait in waits:
            wait()
        from bench import tasks

        for name, fn in (("noop", tasks.noop), ("pause", tasks.pause)):
            self.functions[name] = self.register(name, fn)

    def migrate(self) -> None:
        done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO,
                              env=self.stack.env(), capture_output=True, text=True, timeout=180)
        if done.returncode:
            raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")

    def start_gunicorn(self, profile: bool = False, name: str = "gunicorn", wait: bool = True):
        """gunicorn with gthread workers serving faas_site.wsgi: the throughput setup for the REST API."""
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(WEB_WORKERS),
                "--threads", str(WEB_THREADS), "--no-control-socket", "faas_site.wsgi"]
        if profile:
            argv[3:3] = ["-c", GUNICORN_PROFILE_CONFIG]
        return self._start_web(name, argv, port, wait)

    def start_daphne(self, wait: bool = True):
        """daphne serving faas_site.asgi, as `make run` does: HTTP and websockets in one process."""
        port = free_port()
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "faas_site.asgi:application"]
        return self._start_web("daphne", argv, port, wait)

    def _start_web(self, name: str, argv: list[str], port: int, wait: bool):
        """Spawn a web server; returns a function that waits until it answers (called at once if `wait`)."""
        proc = self.stack.spawn(f"web-{name}", argv)
        url = f"http://127.0.0.1:{port}"
        self.servers[name], self.urls[name] = proc, url

        def answered() -> str:
            wait_until(lambda: self._answers(url, proc), timeout=60, message=f"{name} did not start:\n{proc.output()}")
            return url

        return answered() if wait else answered

    @staticmethod
    def _answers(url: str, proc: Proc) -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
        conn = Connection(url, timeout=2)
        try:
            return conn.request("GET", "/status/x")[0] in (401, 403, 404)
        except OSError:  # refused while it boots
            return False
        finally:
            conn.close()

    def close(self) -> None:
        if self.stack is not None:
            self.stack.close()
        if self.r is not None:
            self.r.close()
        if self.redis_server is not None:
            self.redis_server.cleanup()

    def web_description(self) -> str:
        return f"gunicorn -w {WEB_WORKERS} --threads {WEB_THREADS} faas_site.wsgi (gthread)"

    # --- functions and tasks -----------------------------------------------------------------

    def register(self, name: str, fn) -> str:
        """Register `fn` by reference (workers import bench.tasks from the project root)."""
        conn = Connection(self.urls["gunicorn"])
        try:
            status, body = conn.json("POST", "/register_function", {"name": name, "payload": encode(dill.dumps(fn))})
        finally:
            conn.close()
        if status != 201:
            raise RuntimeError(f"register_function answered {status}: {body}")
        return body["function_id"]

    def submit_batch(self, conn: Connection, function: str, payloads: list[str]) -> list[str]:
        status, body = conn.json("POST", "/execute_batch", {"function_id": self.functions[function],
                                                            "payloads": payloads})
        if status != 201:
            raise RuntimeError(f"execute_batch answered {status}: {body}")
        return body["task_ids"]

    def statuses(self, task_ids: list[str]) -> list[str | None]:
        return self.r.statuses(task_ids)

    def wait_final(self, task_ids: list[str], timeout: float) -> bool:
        """Poll the Redis mirror (cheaply, for setup and warm-up only) until every task is final."""
        left = list(task_ids)
        end = time.monotonic() + timeout
        while left and time.monotonic() < end:
            left = [t for t, s in zip(left, self.statuses(left)) if s not in FINAL_STATUSES]
            if left:
                time.sleep(0.02)
        return not left

    def queue_depth(self) -> QueueDepth:
        return self.r.queue_depth()

    # --- one dispatcher setup at a time ------------------------------------------------------

    @contextlib.contextmanager
    def setup(self, mode: str, processes: int, profile: Path | None = None):
        """Start a dispatcher (and, for pull/push, one worker program with `processes` processes),
        wait until the workers are registered, warm up, yield the Setup, then stop them."""
        stack = self.stack
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
        command = ["-m", "bench.profiled", str(profile)] if profile is not None else ["manage.py"]  # windows: profile-N
        argv = [sys.executable, *command, "run_dispatcher", "-m", mode, "-w", str(processes)]
        if mode != "local":
            argv += ["-p", str(free_port())]
        # INFO for the dispatcher only: its "ready" and "registered" lines say when to begin.
        stack.extra_env["FAAS_LOG_LEVEL"] = "INFO"
        dispatcher = stack.spawn(f"dispatcher-{mode}-{processes}", argv)
        stack.extra_env["FAAS_LOG_LEVEL"] = "WARNING"
        setup = Setup(mode, processes, dispatcher, profile=profile)
        try:
            wait_until(lambda: "ready" in dispatcher.output() or not dispatcher.alive(),
                       timeout=DISPATCHER_READY_TIMEOUT, message=f"dispatcher did not start:\n{dispatcher.output()}")
            if not dispatcher.alive():
                raise RuntimeError(f"dispatcher exited:\n{dispatcher.output()}")
            if mode != "local":
                setup.worker = stack.worker(mode, processes, endpoint_of(dispatcher))
                wait_until(lambda: "registered with" in dispatcher.output() or not setup.worker.alive(),
                           timeout=DISPATCHER_READY_TIMEOUT,
                           message=f"worker did not register:\n{dispatcher.output()}\n{setup.worker.output()}")
                if not setup.worker.alive():
                    raise RuntimeError(f"worker exited:\n{setup.worker.output()}")
            self.warm_up(processes)
            yield setup
        finally:
            stop_together([p for p in (setup.worker, dispatcher) if p is not None])

    def warm_up(self, processes: int) -> None:
        """Run a few tasks through every process first: imports, caches and connections are made
        outside the measured window."""
        conn = Connection(self.urls["gunicorn"])
        try:
            ids = self.submit_batch(conn, "noop", [NOOP_CALL] * max(4, 2 * processes))
            ids += self.submit_batch(conn, "pause", [serialize(((0.01,), {}))] * processes)
        finally:
            conn.close()
        if not self.wait_final(ids, timeout=60):
            raise RuntimeError("warm-up tasks did not finish within 60 s:\n" + self.stack.logs())

    # --- resources of the long-lived servers -------------------------------------------------

    def cpu(self, setup: Setup | None, server: str = "gunicorn") -> dict[str, float]:
        """CPU seconds so far of each part of the platform and of this client process."""
        table = procstat.process_table()
        machine = procstat.machine_seconds()
        figures = {"machine": machine["processes"], "kernel_irq": machine["irq"], "steal": machine["steal"],
                   "web": procstat.tree_cpu(self.servers[server].pid, table),
                   "redis": procstat.cpu_seconds(self.redis_server.process.pid), "client": procstat.self_cpu()}
        if setup is not None:
            figures.update(setup.cpu(table))
        return figures

    @staticmethod
    def own_processes() -> set[int]:
        """This process and everything it started, so other programs' CPU can be told apart."""
        return procstat.tree(os.getpid())

    def web_rss(self, server: str = "gunicorn") -> int:
        """Resident memory of the web server: every process in its group (gunicorn's master and workers)."""
        return procstat.tree_rss(self.servers[server].pid)


def stop_together(procs: list[Proc], timeout: float = 60.0) -> None:
    """SIGTERM every process group at once (each drains in parallel), then wait; Proc.stop
    SIGKILLs whatever is left. A profiled dispatcher saves its session on the way out."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    end = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.popen.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        proc.stop(timeout=1)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent by each part between two `cpu()` readings; "other" is what processes
    outside the suite used meanwhile, so a disturbed run shows ("kernel_irq" and "steal" are
    kept apart: interrupt work charged to no process, and time the hypervisor took)."""
    spent = {k: after[k] - before[k] for k in after if k in before}
    machine = spent.pop("machine", None)
    if machine is not None:
        ours = sum(v for k, v in spent.items() if k not in ("kernel_irq", "steal"))
        spent["other"] = max(0.0, machine - ours)
    return spent


def dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
