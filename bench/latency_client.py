"""The latency test's client, run as its own process like any user's program, so nothing
else in the bench (the completion watcher's thread above all) competes with it for the GIL.

    python -m bench.latency_client URL FUNCTION_ID COUNT RUN_TIMEOUT [submit|call]

`submit` (the default) is `FaaSClient.submit` then `FaaSClient.result` (two requests, the
second a long-poll); `call` is `FaaSClient.call` (one request the server holds). Prints one
JSON object: the task ids and, per round trip, when it began, when the submit returned (for
`submit`) and when the result was seen (wall clock), and any errors.
"""

from __future__ import annotations

import json
import sys
import time

from functions.client import FaaSClient

RESULT_TIMEOUT = 30.0  # seconds one round trip may wait for its result


def round_trips(url: str, function_id: str, count: int, run_timeout: float, style: str = "submit") -> dict:
    client = FaaSClient(url, token="")
    ids, sent, submitted, seen, errors = [], [], [], [], []
    deadline = time.monotonic() + run_timeout
    try:
        client.result(client.submit(function_id), timeout=RESULT_TIMEOUT)  # the SDK's connection, warm
        for _ in range(count):
            if time.monotonic() >= deadline:
                errors.append(f"stopped at the run's time limit after {len(ids)} of {count} round trips")
                break
            began = time.time()
            if style == "call":
                task_id = client.submit_and_wait(function_id)["task_id"]  # what client.call does
                queued = None
            else:
                task_id = client.submit(function_id)
                queued = time.time()
                client.result(task_id, timeout=RESULT_TIMEOUT)
            ended = time.time()
            ids.append(task_id), sent.append(began), submitted.append(queued), seen.append(ended)
    except Exception as exc:  # recorded in the report, never hidden
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    return {"ids": ids, "sent": sent, "submitted": submitted, "seen": seen, "errors": errors}


if __name__ == "__main__":
    url, function_id, count, run_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(round_trips(url, function_id, count, run_timeout, *(sys.argv[5:6] or ["submit"]))))
