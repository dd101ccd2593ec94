"""The soft time limit: SoftTimeLimitExceeded raised inside the running function.

The pool child arms a one-shot SIGALRM timer for the task; its handler raises in the main
thread, where the function runs, between two bytecodes or out of a blocking call such as
time.sleep. The parent's hard deadline is untouched: a function that swallows the
exception is still killed when the deadline comes. A function that uses SIGALRM itself
cannot have a soft limit. Standard library only.
"""

from __future__ import annotations

import math
import signal

from workers.exceptions import SoftTimeLimitExceeded


class SoftLimit:
    """`with limit.armed(seconds): run()`; None or NaN seconds arms nothing."""

    def __init__(self):
        self._seconds: float | None = None
        self._active = False

    def armed(self, seconds: float | None) -> SoftLimit:
        self._seconds = None if seconds is None or math.isnan(seconds) or seconds <= 0 else seconds
        return self

    def _fire(self, signum, frame) -> None:
        if self._active:  # a late signal, after the function returned, must not hit the pool's own code
            self._active = False
            raise SoftTimeLimitExceeded(f"soft time limit of {self._seconds:g} s exceeded")

    def __enter__(self) -> SoftLimit:
        if self._seconds is not None:
            signal.signal(signal.SIGALRM, self._fire)
            self._active = True
            signal.setitimer(signal.ITIMER_REAL, self._seconds)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._seconds is not None:
            self._active = False
            signal.setitimer(signal.ITIMER_REAL, 0)
