"""Every Redis name the platform uses, and the constants that go with them."""

from __future__ import annotations

STREAM = "faas:tasks"  # the queue: a stream read through a consumer group
GROUP = "dispatchers"
TASK_KEY = "faas:task:{task_id}"  # hash: a task's hot state
FUNCTION_KEY = "faas:function:{function_id}"  # hash: a function's payload, cached for dispatchers
DONE_CHANNEL = "faas:done:{task_id}"  # published once when a task reaches a final state
CONTROL_CHANNEL = "faas:control"  # JSON commands to dispatchers: cancel a task, drain a worker
WAKE_CHANNEL = "faas:wake"  # published with every submit, so an idle dispatcher claims at once
DISPATCHER_KEY = "faas:dispatcher:{consumer}"  # expires when a dispatcher stops refreshing it
THROUGHPUT_KEY = "faas:done-per-second"  # hash: unix second -> tasks finished, for the dashboard chart
DELAYED_KEY = "faas:delayed"  # sorted set: task id -> unix time it may run (countdown/eta)
DELAYED_ENTRY = "delayed"  # a waiting task's `entry`: no stream entry may run it before its time
LOCK_KEY = "faas:lock:{name}"  # a periodic job one dispatcher at a time does, with its holder

DISPATCHER_TTL = 6  # seconds; a dispatcher silent this long is dead and its entries are reclaimed
THROUGHPUT_WINDOW = 600  # seconds of throughput history kept
DONE_INLINE_BYTES = 64 * 1024  # a done message carries result and error up to this size
PURGE_BATCH = 500  # stream entries examined per purge script call


def task_key(task_id) -> str:
    return TASK_KEY.format(task_id=task_id)


def function_key(function_id) -> str:
    return FUNCTION_KEY.format(function_id=function_id)


def done_channel(task_id) -> str:
    return DONE_CHANNEL.format(task_id=task_id)


def dispatcher_key(consumer: str) -> str:
    return DISPATCHER_KEY.format(consumer=consumer)
