"""Nothing outlives its parent (issue 12, item 5): SIGKILL a worker or a local-mode dispatcher
while its pool children spin in `while True: pass` or have started a grandchild, and no
process of that tree remains."""

from __future__ import annotations

import os
import signal

import pytest

from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import start_platform


def spin():
    while True:
        pass


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a dead orphan waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("mode", ["push", "pull", "local"])
def test_sigkill_of_the_pool_owner_leaves_no_process_of_its_tree(stack, tmp_path, mode):
    platform = start_platform(stack, mode, 2)
    owner = platform.dispatcher if mode == "local" else platform.workers[0]
    pid_file = tmp_path / "grandchild.pid"
    api = platform.api
    spinning = api.submit(api.register(spin))
    sleeping = api.submit(api.register(ff.spawn_grandchild_then_sleep), str(pid_file))
    wait_until(lambda: api.status(spinning) == api.status(sleeping) == "RUNNING", timeout=30)
    grandchild = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30))
    tree = descendants(owner.pid)
    assert grandchild in tree and len(tree) >= 3  # two pool children and the grandchild, at least
    os.kill(owner.pid, signal.SIGKILL)  # the owner alone: its children are in sessions of their own
    owner.popen.wait(10)
    try:
        wait_until(lambda: not any(is_alive(pid) for pid in tree), timeout=30,
                   message=f"still running after their {mode} parent died: "
                           f"{[pid for pid in tree if is_alive(pid)]}")
    finally:  # a failure must not leave busy loops behind: these pids are ours
        for pid in tree:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
