"""Functions that tests run in pool children; importable, so dill pickles them by reference."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def noop():
    return None


def add(a, b):
    return a + b


def raise_value_error(message: str = "bad value"):
    raise ValueError(message)


def sleep_then(seconds: float, value=None):
    time.sleep(seconds)
    return value


def exit_process(code: int):
    os._exit(code)


def kill_self_with_sigkill():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def spawn_grandchild_then_sleep(pid_path: str, seconds: float = 1000.0):
    """Start a `sleep 1000` grandchild, publish its pid, then block: for process-group kills."""
    child = subprocess.Popen(["sleep", "1000"])
    tmp = f"{pid_path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, pid_path)  # readers never see a half-written pid
    time.sleep(seconds)


def return_unpicklable():
    """A generator: dill cannot serialize one (it can serialize a threading.Lock)."""
    return (i for i in range(3))


class _Unreducible:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def return_unreducible():
    return _Unreducible()


def return_big(n_bytes: int) -> bytes:
    return b"x" * n_bytes


def record_interval(path: str, seconds: float = 0.5) -> int:
    """Append "start end pid" (wall clock) to `path`, for checking how many calls overlap."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    with open(path, "a") as f:
        f.write(f"{start} {end} {os.getpid()}\n")
    return os.getpid()


def raise_system_exit():
    raise SystemExit(7)


class NeedsTwoArguments(Exception):
    """An exception whose __init__ cannot be re-run from its args, so it fails to unpickle."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unrebuildable():
    raise NeedsTwoArguments(1, 2)


def nested_failure():
    """Raise from a helper, so the remote traceback has more than one frame."""
    return _helper_that_fails()


def _helper_that_fails():
    return {}["missing"]


def forge_pool_message():
    """Write junk down the pool pipe the way hostile user code could, then return normally."""
    import gc
    from multiprocessing.connection import Connection

    for obj in gc.get_objects():
        if isinstance(obj, Connection) and not obj.closed:
            obj.send_bytes(b"junk")
    return "forged"


def sleep_then_clock(seconds: float) -> float:
    """Sleep, then return the wall clock at the moment the function returns (long-poll latency)."""
    time.sleep(seconds)
    return time.time()


def write_marker(path: str, text: str = "ran") -> str:
    """Leave a file behind: proof that the task ran (a cancelled queued task must not)."""
    with open(path, "w") as f:
        f.write(text)
    return text


def write_pid_then_sleep(path: str, seconds: float = 1000.0):
    """Publish the pool process's pid, then block: for checking that a cancel stops the process."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)


def count_run(path: str, key: str, seconds: float = 0.0) -> str:
    """Append `key` to a file each time it runs (O_APPEND: one line per execution, even from
    several processes), then sleep: executions are counted by side effect, not by status."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return key


def count_then_exit(path: str, code: int = 3):
    """Record the run, then end the process abruptly (a crash the pool reports)."""
    count_run(path, "crash")
    os._exit(code)


def record_execution(path: str, token: int, seconds: float = 0.0) -> int:
    """count_run, noting also the network namespace the run happened in (which "host", in
    the network namespace tests); returns the token."""
    count_run(path, f"{token} {os.readlink('/proc/self/ns/net')}", seconds)
    return token
