"""Per-task resource limits, set in the pool child just before the call and lifted after it.

Both are soft rlimits, so the long-lived child can lift them again for the next task
(lowering a hard limit cannot be undone without privileges). Both count the whole
process, so each is the child's use so far plus the task's allowance:

- memory: RLIMIT_AS = the address space the child has now + the allowance. Past it,
  allocations fail, the function sees MemoryError, and the task FAILS with
  "exceeded its memory limit of N MiB"; the child is then replaced (its heap may be torn).
- CPU: RLIMIT_CPU = CPU seconds used so far + the allowance. Past it the kernel sends
  SIGXCPU; the child's handler exits with EXIT_CPU, the pool reads that as
  "used its N s of CPU" and starts a replacement. (Code stuck in one C call gets SIGXCPU
  once a second and exits when it returns; the task deadline is the backstop.)

Standard library only: a worker machine needs nothing more.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable

try:
    import resource
except ImportError:  # not a Unix: limits cannot be honoured here
    resource = None

MIB = 1024 * 1024
EXIT_CPU = 128 + signal.SIGXCPU  # how a child that used up its CPU allowance exits


class CannotHonour(Exception):
    """This worker cannot set the limits a task asks for (the message says why)."""


def memory_reason(memory_bytes: int) -> str:
    return f"exceeded its memory limit of {memory_bytes / MIB:g} MiB"


def cpu_reason(cpu_seconds: int) -> str:
    return f"used its {cpu_seconds} s of CPU"


def encode(memory_bytes: int | None, cpu_seconds: int | None) -> str:
    """The limits as a queue entry carries them: "<bytes>:<seconds>", empty parts for none."""
    return f"{memory_bytes or ''}:{cpu_seconds or ''}" if memory_bytes or cpu_seconds else ""


def decode(text: str) -> tuple[int | None, int | None]:
    memory, _, cpu = (text or "").partition(":")
    return (int(memory) if memory else None), (int(cpu) if cpu else None)


def install_cpu_handler() -> None:
    """In the child: leave at once, with EXIT_CPU, when the CPU allowance is used up."""
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(EXIT_CPU))


def apply(memory_bytes: int | None, cpu_seconds: int | None) -> Callable[[], None]:
    """Set the limits for one call; returns the function that lifts them again.
    Raises CannotHonour when this machine cannot enforce them."""
    if not memory_bytes and not cpu_seconds:
        return lambda: None
    if resource is None:
        raise CannotHonour("this worker's platform has no resource limits (the resource module is missing)")
    undo = []
    try:
        if cpu_seconds:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            undo.append(_set(resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime) + cpu_seconds,
                             f"{cpu_seconds} s of CPU"))
        if memory_bytes:
            undo.append(_set(resource.RLIMIT_AS, _address_space() + memory_bytes,
                             f"a memory limit of {memory_bytes / MIB:g} MiB"))
    except BaseException:
        for lift in reversed(undo):
            lift()
        raise

    def lift_all() -> None:
        for lift in reversed(undo):
            lift()
    return lift_all


def _set(which: int, soft: int, asked: str) -> Callable[[], None]:
    old_soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and soft > hard:
        raise CannotHonour(f"the task asks for {asked}, beyond this worker's hard limit")
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError) as exc:
        raise CannotHonour(f"the task asks for {asked}, which this worker cannot set: {exc}") from None
    return lambda: resource.setrlimit(which, (old_soft, hard))


def _address_space() -> int:
    """The child's current virtual size, in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # a lower bound
