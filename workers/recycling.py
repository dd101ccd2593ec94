"""When a pool child is replaced between tasks: after N tasks, or once its memory passed a
limit (a function that leaks, or caches too much, costs a restart instead of the machine).
Standard library only."""

from __future__ import annotations

import os
from dataclasses import dataclass

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


@dataclass(frozen=True)
class ChildLimits:
    max_tasks: int | None = None  # tasks a child runs before it is replaced
    max_memory_kib: int | None = None  # resident memory past which a child is replaced after its task

    def __post_init__(self):
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError("--max-tasks-per-child must be at least 1")
        if self.max_memory_kib is not None and self.max_memory_kib < 1:
            raise ValueError("--max-memory-per-child must be a positive number of KiB")

    @property
    def any(self) -> bool:
        return self.max_tasks is not None or self.max_memory_kib is not None

    def reason_to_recycle(self, tasks_done: int, pid: int) -> str | None:
        """Why the child that has just finished its `tasks_done`-th task should go, or None."""
        if self.max_tasks is not None and tasks_done >= self.max_tasks:
            return f"recycled after {tasks_done} tasks"
        if self.max_memory_kib is not None:
            rss = resident_kib(pid)
            if rss is not None and rss > self.max_memory_kib:
                return f"recycled at {rss} KiB resident, over the limit of {self.max_memory_kib} KiB"
        return None


def resident_kib(pid: int) -> int | None:
    """A process's resident memory now, from /proc (None where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):
        return None
