"""Progress from inside a running function: `report_progress(0.4, "stage 2 of 5")`.

The pool child installs a sink that writes to its pipe to the pool; from there the report
travels pool -> worker -> dispatcher -> Redis while the task runs, and `GET /status` shows
it. Reports are rate-limited here, in the function's own process: at most one every
MIN_INTERVAL seconds leaves it, and a report closer than that to the last one sent is
dropped, so a loop that reports a million times pays a clock read and a comparison for
each. Report at least at each stage that takes a while; the task's result supersedes
whatever was reported last.
Outside a pool child (the function called directly) it does nothing. Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MIN_INTERVAL = 0.2  # seconds between two reports leaving the function's process
MESSAGE_CAP = 200  # characters of a message kept

_sink: Callable[[float, str], None] | None = None
_next_send = 0.0


def report_progress(fraction: float, message: str = "") -> None:
    """Say how far the running task has got: `fraction` between 0 and 1 (clamped), and an
    optional short message. Cheap enough to call in a tight loop."""
    global _next_send
    if _sink is None:
        return
    now = time.monotonic()
    if now < _next_send:
        return
    _next_send = now + MIN_INTERVAL
    try:
        value = min(1.0, max(0.0, float(fraction)))
    except (TypeError, ValueError):
        raise TypeError(f"progress must be a number between 0 and 1, not {fraction!r}") from None
    _sink(value, str(message)[:MESSAGE_CAP])


def install(sink: Callable[[float, str], None] | None) -> None:
    """Called by the pool child: where reports go (None: nowhere)."""
    global _sink, _next_send
    _sink, _next_send = sink, 0.0


def task_started() -> None:
    """A new task may report at once, whatever the previous one did."""
    global _next_send
    _next_send = 0.0
