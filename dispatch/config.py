"""The dispatcher's configuration: plain values copied once from flags and settings."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

from workers import protocol

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ConfigError(ValueError):
    """Raised when the flags cannot work together (e.g. a public bind without keys)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DispatcherConfig:
    mode: str
    redis_url: str
    port: int = 7001
    bind: str = "127.0.0.1"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # local pool size
    timeout: float | None = None  # default task deadline in seconds; None = no deadline
    heartbeat_interval: float = protocol.HEARTBEAT_INTERVAL
    heartbeat_liveness: int = protocol.HEARTBEAT_LIVENESS
    retries: int = 0  # times a lost task is re-queued before it FAILS
    insecure: bool = False
    keys_dir: str | None = None
    max_result_bytes: int = 16 * 1024 * 1024
    result_ttl: int = 7 * 24 * 3600
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    flush_interval: float = 0.2  # seconds between batched database writes
    deadline_grace: float = 2.0  # seconds past a deadline before the dispatcher fails a task itself
    idle_poll: float = 0.5  # seconds between queue checks when nothing wakes the dispatcher
    history_ttl: float | None = None  # seconds before finished task rows are deleted; None keeps them
    retention_interval: float = 0.0  # seconds between retention sweeps, one dispatcher at a time; 0: none
    soft_timeout: float | None = None  # seconds before SoftTimeLimitExceeded is raised in a task's function
    max_tasks_per_child: int | None = None  # local pool: replace a child after this many tasks
    max_memory_per_child: int | None = None  # local pool: replace a child past this resident KiB

    def soft_deadline(self, timeout: float | None) -> float | None:
        """The soft limit a task gets: only when it falls before the task's hard deadline."""
        if self.soft_timeout is None or (timeout is not None and self.soft_timeout >= timeout):
            return None
        return self.soft_timeout

    @property
    def endpoint(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.port}"

    @property
    def secure(self) -> bool:
        """CURVE is on when keys are given, or required off loopback."""
        return self.keys_dir is not None and not self.insecure

    def validate(self) -> None:
        if self.mode not in ("local", "pull", "push"):
            raise ConfigError(f"Unknown mode {self.mode!r}; choose local, pull or push.")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1.")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("--timeout must be a positive number of seconds.")
        if self.flush_interval < 0:
            raise ConfigError("--flush-interval cannot be negative.")
        if self.retries < 0:
            raise ConfigError("--retries cannot be negative.")
        if self.soft_timeout is not None and self.soft_timeout <= 0:
            raise ConfigError("--soft-timeout must be a positive number of seconds.")
        if (self.max_tasks_per_child or 1) < 1 or (self.max_memory_per_child or 1) < 1:
            raise ConfigError("--max-tasks-per-child and --max-memory-per-child must be at least 1.")
        if self.heartbeat_interval <= 0 or self.heartbeat_liveness < 1:
            raise ConfigError("The heartbeat interval must be positive and the liveness at least 1.")
        if self.mode != "local" and not is_loopback(self.bind) and not self.insecure and not self.keys_dir:
            raise ConfigError(
                f"Binding to {self.bind} exposes code execution to the network: give --keys DIR "
                "(create one with `python -m workers.security generate DIR`) or pass --insecure.")
