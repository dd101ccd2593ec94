"""`make run`: the whole platform on this machine — Redis (if none answers), the web server
(HTTP + websockets), a dispatcher and its workers. Ctrl-C stops everything it started.

Settings come from the environment: REDIS_URL, FAAS_WEB_PORT (8000), FAAS_MODE (push),
FAAS_DISPATCHER_PORT (7001), FAAS_WORKER_PROCESSES (CPU count), FAAS_VAR_DIR (var/).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from scripts.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("FAAS_VAR_DIR", REPO / "var"))  # Redis data and the dev credentials
CREDENTIALS = VAR / "dev-credentials.txt"
SECRET_KEY_FILE = VAR / "secret-key"  # made on first run, so sessions survive restarts


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies (Linux prctl; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def secret_key() -> str:
    """This machine's development secret key (the settings refuse to start without one
    unless DEBUG is on): made once, readable only by its owner."""
    if not SECRET_KEY_FILE.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(SECRET_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return SECRET_KEY_FILE.read_text().strip()


class Platform:
    def __init__(self):
        self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.web_port = int(os.environ.get("FAAS_WEB_PORT", "8000"))
        self.mode = os.environ.get("FAAS_MODE", "push")
        self.dispatcher_port = int(os.environ.get("FAAS_DISPATCHER_PORT", "7001"))
        self.processes = int(os.environ.get("FAAS_WORKER_PROCESSES", str(os.cpu_count() or 2)))
        self.env = {**os.environ, "REDIS_URL": self.redis_url, "FAAS_ALLOW_ANONYMOUS": "1",
                    "DJANGO_SETTINGS_MODULE": "faas_site.settings", "PYTHONUNBUFFERED": "1"}
        self.env.setdefault("DJANGO_SECRET_KEY", secret_key())
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stop_requested = False

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Each child leads its own process group, so stopping it reaches its children too,
        and is told to stop if this launcher dies without cleaning up (SIGKILL)."""
        process = subprocess.Popen(argv, cwd=REPO, env=self.env, start_new_session=True, stdin=subprocess.DEVNULL,
                                   preexec_fn=_stop_with_parent)
        self.children.append((name, process))
        return process

    def redis_answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def ensure_redis(self) -> None:
        if self.redis_answers():
            print(f"Using the Redis at {self.redis_url}")
            return
        url = urlparse(self.redis_url)
        if url.hostname not in ("127.0.0.1", "localhost"):
            sys.exit(f"No Redis answers at {self.redis_url}, and it is not on this machine to start.")
        data = VAR / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # Append-only persistence: an acknowledged task survives a Redis restart.
        self.spawn("redis", ["redis-server", "--port", str(url.port or 6379), "--bind", "127.0.0.1",
                             "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                             "--save", "", "--loglevel", "warning"])
        wait_until(self.redis_answers, timeout=15, message="redis-server did not start")
        print(f"Started redis-server on port {url.port or 6379} (data in {data})")

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env, check=True)

    def ensure_superuser(self) -> str:
        """Create a development superuser and API token on first run; print them once."""
        if CREDENTIALS.exists():
            return f"Log in with the credentials in {CREDENTIALS} (created on first run)."
        password = secrets.token_urlsafe(12)
        code = ("from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token\n"
                "u = User.objects.filter(username='admin').first() or User.objects.create_superuser('admin', '', '')\n"
                f"u.set_password({password!r}); u.is_staff = u.is_superuser = True; u.save()\n"
                "print(Token.objects.get_or_create(user=u)[0].key)")
        token = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=self.env,
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        text = f"username: admin\npassword: {password}\nAPI token: {token}\n"
        CREDENTIALS.write_text(text)
        CREDENTIALS.chmod(0o600)
        return "First run: a development superuser was created (also saved, readable only by you, in " \
               f"{CREDENTIALS}):\n  " + text.strip().replace("\n", "\n  ")

    def start(self) -> str:
        VAR.mkdir(exist_ok=True)
        self.ensure_redis()
        self.manage("migrate", "--no-input", "-v", "0")
        login = self.ensure_superuser()
        web = self.spawn("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.web_port),
                                 "faas_site.asgi:application"])
        endpoint = f"tcp://127.0.0.1:{self.dispatcher_port}"
        argv = [sys.executable, "manage.py", "run_dispatcher", "-m", self.mode]
        argv += ["-w", str(self.processes)] if self.mode == "local" else ["-p", str(self.dispatcher_port)]
        self.spawn("dispatcher", argv)
        if self.mode != "local":
            self.spawn("workers", [sys.executable, "-m", f"workers.{self.mode}_worker", str(self.processes),
                                   endpoint])
        wait_until(lambda: self.web_answers(web), timeout=60, message="the web server did not start")
        return login

    def web_answers(self, web: subprocess.Popen) -> bool:
        if web.poll() is not None:
            sys.exit(f"The web server exited with code {web.returncode}.")
        try:
            with socket.create_connection(("127.0.0.1", self.web_port), timeout=0.5):
                return True
        except OSError:
            return False

    def banner(self, login: str) -> str:
        base = f"http://127.0.0.1:{self.web_port}"
        return f"""
FaaS platform running ({self.mode} mode, {self.processes} worker processes)
  API docs:   {base}/docs
  Admin:      {base}/admin/   (live dashboard: {base}/admin/functions/task/dashboard/)
  Anonymous API access is on for local development (FAAS_ALLOW_ANONYMOUS=1).
{login}
Try it:     curl -s {base}/status/00000000-0000-0000-0000-000000000000   (README.md shows a full session)
Press Ctrl-C to stop everything.
"""

    def watch(self) -> int:
        """Wait until Ctrl-C/SIGTERM or until a child dies; returns the exit code."""
        while not self.stop_requested:
            for name, process in self.children:
                if process.poll() is not None:
                    print(f"\n{name} exited with code {process.returncode}; stopping the platform.")
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """Stop children newest first (workers before the dispatcher, Redis last)."""
        for _name, process in reversed(self.children):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
            try:  # anything the child left in its group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print("Stopped.")


def main() -> int:
    platform = Platform()

    def request_stop(signum, frame):
        platform.stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        login = platform.start()
        print(platform.banner(login), flush=True)
        return platform.watch()
    finally:
        platform.stop()


if __name__ == "__main__":
    sys.exit(main())
