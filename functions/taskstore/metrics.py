"""The names and format of the platform's Prometheus counters: one Redis hash every process adds to.

Counters are kept in Redis rather than in each process (prometheus-client's multiprocess
mode) because the events happen in different processes on possibly different machines:
submits in any web server process, finishes, retries and deadline kills in any number of
dispatchers. Summed in one hash, any web process answers /metrics with the whole
platform's figures, and the gauges come from the same Redis the queue lives in.

A field is `<name>` or `<name>\t<label>=<value>,...` (labels sorted); histogram buckets
are stored per bucket (not cumulative) and summed when read. The store's
`add_metrics` / `metrics` / `metric_lags` read and write them.
"""

from __future__ import annotations

import math

COUNTERS_KEY = "faas:metrics:counters"  # hash: field -> number, only ever incremented
LAG_KEY = "faas:metrics:lag:{consumer}"  # a dispatcher's loop lag, expiring with its liveness
LAG_TTL = 6  # seconds, as the dispatcher liveness key

SUBMITTED = "tasks_submitted_total"
FINISHED = "tasks_finished_total"
RETRIES = "task_retries_total"
DEADLINE_KILLS = "task_deadline_kills_total"
QUEUE_WAIT = "task_queue_wait_seconds"
RUN_TIME = "task_run_seconds"

QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                      math.inf)
RUN_TIME_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, math.inf)
BUCKETS = {QUEUE_WAIT: QUEUE_WAIT_BUCKETS, RUN_TIME: RUN_TIME_BUCKETS}


def field(name: str, **labels: str) -> str:
    if not labels:
        return name
    return name + "\t" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    name, _, labels = raw.partition("\t")
    return name, dict(pair.split("=", 1) for pair in labels.split(",") if "=" in pair)


def bucket_field(name: str, value: float) -> str:
    """The (non-cumulative) bucket a histogram observation falls in."""
    le = next(b for b in BUCKETS[name] if value <= b)
    return field(name + "_bucket", le="+Inf" if le == math.inf else repr(le))


def lag_key(consumer: str) -> str:
    return LAG_KEY.format(consumer=consumer)


# Lua for the enqueue script: count one submit of the function in ARGV-position `fid`.
SUBMIT_COUNTER_LUA = "redis.call('HINCRBY', '" + COUNTERS_KEY + "', '" + SUBMITTED + "\tfunction=' .. {fid}, 1)"
