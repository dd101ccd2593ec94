"""Start and stop a throwaway PostgreSQL cluster (tests, the benchmark and `make cluster`).

Debian's server binaries live in /usr/lib/postgresql/<version>/bin, off PATH. PostgreSQL
refuses to run as root, so as root the cluster belongs to the `postgres` account the package
creates; it lives in a temporary directory of its own (data and Unix socket), listens on a
free loopback port and is stopped by pid, never by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from scripts.redis_server import free_port

SERVICE_ACCOUNT = "postgres"  # the account Debian's postgresql package creates
SUPERUSER = "faas"  # the cluster's superuser: tests create and drop their databases with it
DATABASE = "faas"
# Durability off: a throwaway cluster gains speed and loses nothing it needs. Locking,
# isolation and constraints, what the tests are here for, are untouched by these.
FAST_UNSAFE = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def postgres_bin_dir() -> Path | None:
    """The newest installed server's bin directory, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A PostgreSQL cluster this process initialised and started; `cleanup` stops and deletes it."""

    def __init__(self, host: str = "127.0.0.1", max_connections: int = 300, durable: bool = False):
        self.bin = postgres_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed; `make test` installs it with apt-get (package postgresql)")
        self.host = host
        self.port = free_port()
        self.max_connections = max_connections
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="faas-postgres-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen | None = None
        self.account = _run_as()

    @property
    def url(self) -> str:
        return f"postgres://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        if self.account is not None:
            os.chown(self.dir, self.account.pw_uid, self.account.pw_gid)
        self._as_owner([self.bin / "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                        "--no-sync", "--no-instructions"])
        settings = [f"listen_addresses={self.host}", f"port={self.port}", f"unix_socket_directories={self.dir}",
                    f"max_connections={self.max_connections}", "log_min_messages=warning"]
        if not self.durable:
            settings += FAST_UNSAFE
        argv = [str(self.bin / "postgres"), "-D", str(self.data)]
        for setting in settings:
            argv += ["-c", setting]
        log = open(self.dir / "postgres.log", "wb")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, **self._user())
        log.close()
        self._wait_ready(timeout)
        self._as_owner([self.bin / "createdb", "-h", self.dir, "-p", str(self.port), "-U", SUPERUSER, DATABASE])
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run([self.bin / "pg_isready", "-q", "-h", self.dir, "-p", str(self.port)],
                                   capture_output=True).returncode == 0
            if ready:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT: roll back open transactions, then exit), then SIGKILL if stuck."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _user(self) -> dict:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _as_owner(self, argv: list) -> None:
        result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=self.dir, **self._user())
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{result.stdout}{result.stderr}")


def _run_as() -> pwd.struct_passwd | None:
    """PostgreSQL will not run as root: then the cluster belongs to the service account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        raise RuntimeError(f"running as root and no {SERVICE_ACCOUNT!r} account exists to own the cluster "
                           "(apt-get install postgresql creates it)") from None
