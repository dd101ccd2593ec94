"""Functions the issue-16 tests run in pool children; importable without Django, so dill
pickles them by reference."""

from __future__ import annotations


def append_line(path: str, text: str = "ran") -> int:
    """Append one line: the file's line count says how many times the task ran."""
    with open(path, "a") as f:
        f.write(text + "\n")
    with open(path) as f:
        return sum(1 for _ in f)


def version_one():
    return "one"


def version_two():
    return "two"


def allocate(megabytes: int) -> int:
    """Hold `megabytes` MiB at once (past a memory limit, this raises MemoryError)."""
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


def spin(seconds: float) -> float:
    """Burn CPU for `seconds` of wall time."""
    import time

    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return seconds
