"""Push mode: the dispatcher sends each task to the registered worker with the most free
processes; heartbeats both ways tell it when a worker is gone."""

from __future__ import annotations

from dispatch.workertable import WorkerEntry
from dispatch.zmq_modes import RemoteDispatcher
from workers import protocol


class PushDispatcher(RemoteDispatcher):
    mode = "push"

    def capacity(self) -> int:
        return self.table.push_capacity()

    def choose(self, tasks: list[protocol.Task]) -> list[tuple[WorkerEntry, list[protocol.Task]]]:
        """One task at a time to the most free worker, grouped into one message per worker."""
        batches: dict[bytes, tuple[WorkerEntry, list[protocol.Task]]] = {}
        for task in tasks:
            entry = self.table.pick(lambda e, task=task: self.can_run(e, task))
            if entry is None:
                continue  # no free worker can run this one; a later task may fit another
            entry.planned += 1  # counted as busy while planning; assign() makes it real
            batches.setdefault(entry.identity, (entry, []))[1].append(task)
        for entry, batch in batches.values():
            entry.planned -= len(batch)
        return list(batches.values())
