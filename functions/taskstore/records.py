"""The shapes the store reads and writes: a queue entry, a claimed entry, the queue's depth,
and the done message (which decodes to the one finished-task record, `protocol.Result`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from workers.protocol import Result


@dataclass(frozen=True)
class QueuedTask:
    """One task on the queue. `fields()` is both its stream entry and its script arguments,
    so the two can never disagree."""

    task_id: str
    function_id: str
    owner_id: str  # "" for anonymous
    arguments: bytes
    timeout: float | None = None
    attempt: int = 1
    retry: str = ""  # JSON: the task's retry policy and its earlier attempts' errors (dispatch.retrying)
    limits: str = ""  # resource limits of the call, workers.limits.encode(); "" for none

    FIELD_NAMES = ("task_id", "function_id", "owner", "arguments", "timeout", "attempt", "retry", "limits")

    def fields(self) -> dict:
        return {"task_id": self.task_id, "function_id": self.function_id, "owner": self.owner_id,
                "arguments": self.arguments, "timeout": "" if self.timeout is None else repr(self.timeout),
                "attempt": self.attempt, "retry": self.retry, "limits": self.limits}

    @classmethod
    def from_fields(cls, fields: dict) -> QueuedTask:
        """Inverse of `fields()` for an entry read back from Redis (bytes keys and values)."""
        timeout = fields.get(b"timeout", b"")
        return cls(task_id=fields[b"task_id"].decode(), function_id=fields[b"function_id"].decode(),
                   owner_id=fields.get(b"owner", b"").decode(), arguments=fields[b"arguments"],
                   timeout=float(timeout) if timeout else None, attempt=int(fields.get(b"attempt", b"1")),
                   retry=fields.get(b"retry", b"").decode(), limits=fields.get(b"limits", b"").decode())

    def again(self, attempt: int, retry: str | None = None) -> QueuedTask:
        return QueuedTask(self.task_id, self.function_id, self.owner_id, self.arguments, self.timeout, attempt,
                          self.retry if retry is None else retry, self.limits)


class Claim(enum.IntEnum):
    """What the store found when a dispatcher took an entry."""

    FORGED = -1  # no record behind the entry, or the record names another entry: never run
    FINAL = 0  # the task already has its final state (cancelled while queued, or finished)
    STARTED = 1  # QUEUED -> RUNNING: run it
    WAS_RUNNING = 2  # reclaimed from a dead dispatcher while it ran: lost


@dataclass(frozen=True)
class Claimed:
    entry_id: bytes
    task: QueuedTask | None  # None when the entry could not be parsed
    outcome: Claim


@dataclass(frozen=True)
class QueueDepth:
    """Stream entries not yet finished: `pending` are held by a dispatcher, the rest wait."""

    length: int
    pending: int

    @property
    def waiting(self) -> int:
        return max(0, self.length - self.pending)


def parse_done(task_id: str, data: bytes) -> Result | None:
    """The final state in a done message; None when it names only the status (a result too
    large to carry, or a purge), and the task must be read."""
    status, newline, rest = data.partition(b"\n")
    length, newline2, rest = rest.partition(b"\n")
    if not (newline and newline2 and length.isdigit()):
        return None
    size = int(length)
    return Result(task_id, status.decode(), rest[size:], rest[:size].decode(errors="replace"))
