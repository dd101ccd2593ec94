"""What a dispatcher keeps in memory: the tasks it holds and a cache of function payloads."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from functions.taskstore import QueuedTask

FUNCTION_CACHE_BYTES = 64 * 1024 * 1024  # function payloads kept in memory


class FunctionCache:
    """Function payloads by id, least recently used dropped past a byte budget."""

    def __init__(self, budget: int = FUNCTION_CACHE_BYTES):
        self.budget = budget
        self.size = 0
        self.items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, function_id: str) -> bytes | None:
        data = self.items.get(function_id)
        if data is not None:
            self.items.move_to_end(function_id)
        return data

    def put(self, function_id: str, data: bytes) -> None:
        if function_id in self.items:
            return
        self.items[function_id] = data
        self.size += len(data)
        while self.size > self.budget and len(self.items) > 1:
            _, dropped = self.items.popitem(last=False)
            self.size -= len(dropped)


@dataclass
class InFlight:
    """A task this dispatcher claimed and has not yet seen finish."""

    queued: QueuedTask
    entry_id: bytes
    worker: str | None = None  # identity of the worker holding it
    deadline: float | None = None  # monotonic; the dispatcher's own backstop
