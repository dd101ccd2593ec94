"""Functions the operator tests run on workers (importable from the repo root, as the
workers run there)."""

from __future__ import annotations

import logging
import os
import sys
import time

from workers.exceptions import SoftTimeLimitExceeded


def chatty(n: int = 3) -> int:
    print("hello from stdout")
    print("a warning on stderr", file=sys.stderr)
    logging.getLogger("user.code").info("step %d of %d", 1, n)
    sys.stdout.buffer.write(b"raw bytes\n")
    return n


def print_megabytes(megabytes: int) -> int:
    line = "x" * 1023 + "\n"
    for i in range(megabytes * 1024):
        sys.stdout.write(line if i < megabytes * 1024 - 1 else "the very last line\n")
    return megabytes


def print_then_raise():
    print("about to fail")
    raise ValueError("after printing")


def silent() -> int:
    return 1


def clean_up_on_soft_limit(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


def ignore_soft_limit(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(end - time.monotonic())
        except SoftTimeLimitExceeded:
            pass
    return "never"


def pid() -> int:
    return os.getpid()


def grow(megabytes: int) -> int:
    """Keep `megabytes` alive in the child after the task (a leak)."""
    globals().setdefault("_leak", []).append(bytearray(megabytes * 1024 * 1024))
    return os.getpid()


def staged(path: str) -> str:
    """Report progress, then wait for `path` to exist (the test's go-ahead)."""
    from workers.progress import report_progress

    report_progress(0.4, "stage 2 of 5")
    while not os.path.exists(path):
        time.sleep(0.02)
    return "done"


def report_many(n: int) -> float:
    """Report progress n times in a tight loop; returns the seconds it took."""
    from workers.progress import report_progress

    began = time.perf_counter()
    for i in range(n):
        report_progress(i / n, "looping")
    return time.perf_counter() - began


def flaky(path: str, failures: int, kind: str = "ConnectionError") -> int:
    """Raise `kind` the first `failures` calls (counted in the file at `path`), then succeed."""
    count = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(count + 1))
    if count < failures:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[kind](f"call {count + 1} failed")
    return count + 1
