"""What output capture and the soft-limit hook cost a pool child per task, for a function
that prints nothing: `python -m bench.capture_cost [N]`.

Times, in one process, the child's call as the pool makes it (`pool._run_task`: capture
swapped in, soft limit unarmed) against the bare `execution.run_call`, interleaved in
rounds so drift on a shared machine hits both alike, and reports the median round of
each (the bare call's prints go to /dev/null).
A printing function is timed too, to show what capture costs when it has work to do.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

from workers import execution, pool
from workers.capture import OutputCapture
from workers.serialization import dumps
from workers.softlimit import SoftLimit

ROUNDS = 21


def noop():
    return None


def prints():
    print("one line of output")


def per_call_us(call, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - began) / n * 1e6


def main(argv=None) -> int:
    n = int((argv or sys.argv[1:] or ["2000"])[0])
    capture, soft, cache = OutputCapture(), SoftLimit(), {}
    capture.install_logging()
    arguments = dumps(((), {}))
    rows = {}
    for name, fn in (("noop", noop), ("prints one line", prints)):
        function = dumps(fn)
        def bare(function=function, name=name):
            return execution.run_call("t", function, arguments, 1 << 20, cache, function_id=name)

        def pooled(function=function, name=name):
            return pool._run_task("t", function, arguments, 1 << 20, cache, name, capture, soft.armed(None))
        bares, pooleds = [], []
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            for _ in range(ROUNDS):
                bares.append(per_call_us(bare, n))
                pooleds.append(per_call_us(pooled, n))
        rows[name] = (statistics.median(bares), statistics.median(pooleds))
    print(f"per task in the pool child, median of {ROUNDS} interleaved rounds of {n:,} calls:")
    print("| function | run_call µs | with capture + soft-limit hook µs | added µs |")
    print("|---|---|---|---|")
    for name, (bare, pooled) in rows.items():
        print(f"| {name} | {bare:.2f} | {pooled:.2f} | {pooled - bare:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
