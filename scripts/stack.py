"""Real platform processes for end-to-end tests: web server, dispatcher, workers.

Every process is started in its own session and stopped by its process group, so tests
stop only what they started. Output goes to log files that failures print.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.netns import Host
from scripts.redis_server import free_port
from scripts.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent  # the project root


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left; waits for the leader."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # children of a stopped leader too
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(5)


@dataclass
class Stack:
    """Start platform processes against one Redis and one database file."""

    redis_url: str
    database_url: str
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    extra_env: dict = field(default_factory=dict)
    # The settings refuse to start with DEBUG off and no key: one throwaway key per stack.
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))
    stop_with_parent: bool = False  # children get SIGTERM if this process dies (a launcher, not a test)

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url, "FAAS_ALLOW_ANONYMOUS": "1",
                    "PYTHONPATH": str(REPO), "DJANGO_SETTINGS_MODULE": "faas_site.settings",
                    "PYTHONUNBUFFERED": "1", **self.extra_env})
        env.setdefault("DJANGO_SECRET_KEY", self.secret_key)
        return env

    def spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        handle = open(log, "wb")
        popen = subprocess.Popen(argv, cwd=REPO, env=self.env(), stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_stop_with_parent if self.stop_with_parent else None)
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def web(self, server: str = "gunicorn", port: int | None = None, threads: int = 8) -> str:
        """Start the web server; returns its base URL once it answers."""
        port = port or free_port()
        if server == "daphne":
            argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "faas_site.asgi:application"]
        else:
            argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "--threads", str(threads),
                    "--no-control-socket", "faas_site.wsgi"]
        proc = self.spawn(f"web-{server}", argv)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._answers(url, proc), timeout=60, message="web server did not start")
        return url

    def _answers(self, url: str, proc: Proc) -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
        try:
            return requests.get(url + "/status/x", timeout=1).status_code in (401, 403, 404)
        except requests.RequestException:  # refused or slow while it boots
            return False

    def dispatcher(self, mode: str, *args: str, port: int | None = None, wait: bool = True,
                   host: Host | None = None) -> Proc:
        """A dispatcher; with `host`, inside that network namespace (scripts.netns)."""
        argv = [sys.executable, "manage.py", "run_dispatcher", "-m", mode, *args]
        if mode != "local":
            argv += ["-p", str(port or free_port())]
        proc = self.spawn(f"dispatcher-{mode}", host.argv(argv) if host else argv)
        if wait:
            wait_until(lambda: "ready" in proc.output() or not proc.alive(), timeout=30)
            assert proc.alive(), proc.output()
        return proc

    def worker(self, kind: str, processes: int, endpoint: str, *args: str, host: Host | None = None) -> Proc:
        """A pull or push worker; with `host`, inside that network namespace (scripts.netns)."""
        argv = [sys.executable, "-m", f"workers.{kind}_worker", str(processes), endpoint, *args]
        return self.spawn(f"{kind}-worker" + (f"-{host.name}" if host else ""), host.argv(argv) if host else argv)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} (pid {p.pid}) =====\n{p.output()[-6000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def endpoint_of(dispatcher: Proc, address: str = "127.0.0.1") -> str:
    """The tcp:// endpoint a pull/push dispatcher was started on (from its argv), at `address`."""
    argv = dispatcher.popen.args
    return f"tcp://{address}:{argv[argv.index('-p') + 1]}"
