"""Memory and CPU of processes and their descendants, read from /proc (Linux only).

Trees, not process groups: the worker pool puts each child in a process group of its own
(so a deadline kill takes the child's own children too), so only the parent links find
every process a dispatcher or worker program started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    cpu: float  # user + system seconds
    comm: str


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces or parens)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()


def process_table() -> dict[int, ProcInfo]:
    """Every live process: parent, CPU seconds so far, command name."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        try:
            with open(f"/proc/{name}/comm") as handle:
                comm = handle.read().strip()
        except OSError:
            comm = "?"
        table[int(name)] = ProcInfo(int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, comm)
    return table


def tree(root: int, table: dict[int, ProcInfo] | None = None) -> set[int]:
    """`root` and all its live descendants."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found, todo = set(), [root] if root in table else []
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def tree_cpu(root: int, table: dict[int, ProcInfo] | None = None, exclude: tuple[int, ...] = ()) -> float:
    table = process_table() if table is None else table
    return sum(table[pid].cpu for pid in tree(root, table) if pid not in exclude)


def tree_rss(root: int) -> int:
    return sum(rss_bytes(pid) for pid in tree(root))


def rss_bytes(pid: int) -> int:
    """VmRSS of one process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def self_cpu() -> float:
    """CPU time of this (the client) process, every thread included."""
    times = os.times()
    return times.user + times.system


def foreign_cpu(before: dict[int, ProcInfo], after: dict[int, ProcInfo], own: set[int],
                top: int = 3) -> list[tuple[str, float]]:
    """The processes not in `own` that used the most CPU between two `process_table()` readings."""
    used = []
    for pid, info in after.items():
        if pid in own:
            continue
        spent = info.cpu - (before[pid].cpu if pid in before else 0.0)
        if spent > 0.05:
            used.append((f"{info.comm}[{pid}]", round(spent, 2)))
    return sorted(used, key=lambda item: -item[1])[:top]


def machine_seconds() -> dict[str, float]:
    """CPU seconds since boot, all cores: `processes` (user + nice + system: time charged to
    some process), `irq` (interrupt and softirq work, e.g. loopback networking, charged to no
    process) and `steal` (taken by the hypervisor)."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in handle.readline().split()[1:9])
    return {"processes": (user + nice + system) / _TICKS, "irq": (irq + softirq) / _TICKS, "steal": steal / _TICKS}


def load_average() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(v) for v in handle.read().split()[:3]]
