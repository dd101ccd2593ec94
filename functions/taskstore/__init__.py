"""The task store: the queue and the hot state of every task, in Redis.

This package is the only code in the project that issues Redis commands. It is
Django-free, so the dispatcher's rules can be tested against its in-memory twin
(`memory.MemoryTaskStore`) and the web, dispatcher and benchmark share one contract.

Every change of a task's state is one Lua script that refuses what the state machine
does not allow (QUEUED -> RUNNING -> COMPLETED | FAILED; QUEUED -> FAILED; RUNNING -> QUEUED
only for a retry while not final) and tells its caller whether it applied.
"""

from functions.taskstore.keys import DISPATCHER_TTL, DONE_INLINE_BYTES, THROUGHPUT_WINDOW
from functions.taskstore.records import Claim, Claimed, QueueDepth, QueuedTask
from functions.taskstore.store import ScriptsMissing, TaskStore, store_for

__all__ = ["Claim", "DISPATCHER_TTL", "DONE_INLINE_BYTES", "THROUGHPUT_WINDOW", "Claimed", "QueueDepth", "QueuedTask",
           "ScriptsMissing", "TaskStore", "store_for"]
