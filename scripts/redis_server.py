"""Start and stop a real redis-server on a free port (tests, the benchmark and `make cluster`).

Append-only persistence is on unless a caller turns it off: that is how the project runs
Redis everywhere, so a restart keeps every acknowledged task (fsync once a second).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from functions.taskstore import TaskStore

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "redis.crt", "redis.key"


def make_tls_files(directory: str | os.PathLike, host: str = "127.0.0.1") -> Path:
    """A throwaway CA and a server certificate for `host` (openssl), for a TLS-only Redis."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=faas test CA",
            "-keyout", "ca.key", "-out", CA_FILE)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", KEY_FILE, "-out", "redis.csr")
    (root / "san.ext").write_text(f"subjectAltName=IP:{host}\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", CA_FILE, "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", CERT_FILE)
    return root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server this process started, in a temporary directory; stopped by pid.

    `host` is the one address it listens on: loopback, or an address of a network namespace
    link this process made (network namespace tests, `make cluster`). Off loopback it gets a
    random password (Redis's protected mode refuses password-less remote clients, rightly)."""

    def __init__(self, appendonly: bool = True, host: str = "127.0.0.1", port: int | None = None,
                 tls_dir: str | os.PathLike | None = None):
        self.host = host
        self.tls_dir = Path(tls_dir) if tls_dir else None  # TLS only (no plain port): make_tls_files' layout
        self.password = None if ipaddress.ip_address(host).is_loopback else secrets.token_urlsafe(18)
        self.port = port or free_port(host)
        self.dir = tempfile.mkdtemp(prefix="faas-redis-")
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_dir:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls_dir / CA_FILE}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if not self.tls_dir:
            return ["--port", str(self.port)]
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls_dir / CERT_FILE),
                "--tls-key-file", str(self.tls_dir / KEY_FILE), "--tls-ca-cert-file", str(self.tls_dir / CA_FILE),
                "--tls-auth-clients", "no"]

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs it with apt-get")
        self.process = subprocess.Popen(
            [binary, *self._listen_args(), "--bind", self.host, "--dir", self.dir, "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "yes",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for a launcher must not stop Redis before its clients
        )
        store = TaskStore.connect(self.url)  # ready once the platform's own client gets an answer
        deadline = time.monotonic() + timeout
        while True:
            try:
                store.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        store.close()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
