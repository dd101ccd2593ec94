"""Pull mode: workers ask for work when they have free processes; nothing is sent unasked."""

from __future__ import annotations

from dispatch.workertable import WorkerEntry
from dispatch.zmq_modes import RemoteDispatcher
from workers import protocol


class PullDispatcher(RemoteDispatcher):
    mode = "pull"

    def capacity(self) -> int:
        return self.table.pull_capacity()

    def choose(self, tasks: list[protocol.Task]) -> list[tuple[WorkerEntry, list[protocol.Task]]]:
        """Fill each worker's request in turn, as many tasks as it asked for."""
        plan, rest = [], list(tasks)
        for entry in self.table.available():
            room = min(entry.credit, entry.free)
            fits = [t for t in rest if self.can_run(entry, t)][:room]
            if fits:
                plan.append((entry, fits))
                taken = {t.task_id for t in fits}
                rest = [t for t in rest if t.task_id not in taken]
        return plan
