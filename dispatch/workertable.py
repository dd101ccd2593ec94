"""Which workers a ZeroMQ dispatcher knows, what each holds, and when each expires.

A pure class in the Paranoid Pirate shape: every method takes `now`, none touches a
socket, so the heartbeat rules are unit-tested with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.protocol import WorkerInfo


@dataclass
class WorkerEntry:
    identity: bytes
    info: WorkerInfo
    expiry: float  # monotonic time after which the worker is dead
    tasks: set[str] = field(default_factory=set)
    credit: int = 0  # pull: tasks the worker asked for and has not been sent
    adopted: set[str] = field(default_factory=set)  # tasks it reported holding that we did not send it
    planned: int = 0  # push: tasks chosen for it while planning one hand-out
    draining: bool = False

    @property
    def name(self) -> str:
        return self.identity.decode(errors="replace")

    @property
    def busy(self) -> int:
        return len(self.tasks) + len(self.adopted) + self.planned

    @property
    def free(self) -> int:
        return max(0, self.info.processes - self.busy)


class WorkerTable:
    def __init__(self, interval: float, liveness: int):
        self.ttl = interval * liveness
        self.workers: dict[bytes, WorkerEntry] = {}
        self.holder: dict[str, bytes] = {}  # task_id -> identity

    def get(self, identity: bytes) -> WorkerEntry | None:
        return self.workers.get(identity)

    def register(self, identity: bytes, info: WorkerInfo, now: float) -> tuple[WorkerEntry, list[str]]:
        """Add or replace a worker. Tasks it reports holding stay assigned to it (or count as
        busy if we never sent them); returns the tasks we sent that it no longer has."""
        old = self.remove(identity)
        reported = set(info.holding)
        ours = old.tasks if old else set()
        entry = WorkerEntry(identity, info, now + self.ttl, adopted=reported - ours)
        self.workers[identity] = entry
        for task_id in ours & reported:
            entry.tasks.add(task_id)
            self.holder[task_id] = identity
        return entry, sorted(ours - reported)

    def seen(self, identity: bytes, now: float) -> bool:
        """Any message from a worker proves it alive; False if it is unknown."""
        entry = self.workers.get(identity)
        if entry is None:
            return False
        entry.expiry = now + self.ttl
        return True

    def expired(self, now: float) -> list[bytes]:
        """The workers whose heartbeats stopped; the caller removes them."""
        return [e.identity for e in self.workers.values() if now >= e.expiry]

    def remove(self, identity: bytes) -> WorkerEntry | None:
        entry = self.workers.pop(identity, None)
        if entry is not None:
            for task_id in entry.tasks:
                self.holder.pop(task_id, None)
        return entry

    def assign(self, identity: bytes, task_id: str) -> None:
        entry = self.workers[identity]
        entry.tasks.add(task_id)
        entry.credit = max(0, entry.credit - 1)
        self.holder[task_id] = identity

    def holds(self, identity: bytes, task_id: str) -> bool:
        """Whether `identity` is the worker that holds `task_id` now: the only one whose result counts."""
        entry = self.workers.get(identity)
        return entry is not None and (task_id in entry.tasks or task_id in entry.adopted)

    def adopt(self, task_id: str) -> WorkerEntry | None:
        """A task taken over from a dead dispatcher that a registered worker reports running:
        it becomes ours, held by that worker, instead of counting as lost."""
        for entry in self.workers.values():
            if task_id in entry.adopted:
                entry.adopted.discard(task_id)
                entry.tasks.add(task_id)
                self.holder[task_id] = entry.identity
                return entry
        return None

    def release(self, task_id: str, identity: bytes | None = None) -> WorkerEntry | None:
        """A task finished or was lost; frees its process."""
        holder = self.holder.pop(task_id, None)
        entry = self.workers.get(holder if holder is not None else identity)
        if entry is None:
            return None
        entry.tasks.discard(task_id)
        entry.adopted.discard(task_id)
        return entry

    def available(self) -> list[WorkerEntry]:
        return [e for e in self.workers.values() if not e.draining]

    def pick(self, able=None) -> WorkerEntry | None:
        """Push: the worker with the most free processes (ties: the one registered first),
        among those `able(entry)` accepts."""
        best = max((e for e in self.available() if able is None or able(e)), key=lambda e: e.free, default=None)
        return best if best is not None and best.free > 0 else None

    def push_capacity(self) -> int:
        return sum(e.free for e in self.available())

    def pull_capacity(self) -> int:
        return sum(min(e.credit, e.free) for e in self.available())
