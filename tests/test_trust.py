"""Trust boundaries through the real processes: only the worker holding a task reports its
result, only what the API queued runs, and a crashing function runs at most --retries + 1
times."""

from __future__ import annotations

import uuid

import zmq

from functions import services
from functions.taskstore import keys
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import start_platform
from tests.stack import endpoint_of
from workers import protocol
from workers.serialization import dumps


def test_a_forged_results_frame_does_not_set_a_result(stack):
    platform = start_platform(stack, "push", 1)
    function_id = platform.api.register(ff.sleep_then)
    task_id = platform.api.submit(function_id, 2.0, "genuine")
    wait_until(lambda: platform.api.status(task_id) == "RUNNING", timeout=20)
    context = zmq.Context()
    rogue = context.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(endpoint_of(platform.dispatcher))
    forged = protocol.Result(task_id, "COMPLETED", dumps("forged"), "", 1.0, 2.0)
    rogue.send_multipart(protocol.encode(protocol.Register(protocol.WorkerInfo(1, "rogue", 1))))
    rogue.send_multipart(protocol.encode(protocol.Results((forged,), free=1)))
    wait_until(lambda: "dropped a result for task" in platform.dispatcher.output(), timeout=10)
    assert platform.api.status(task_id) == "RUNNING"
    assert platform.api.value(task_id) == "genuine"
    rogue.close()
    context.term()


def test_a_stream_entry_no_submit_created_never_runs(stack, tmp_path, redis_client):
    platform = start_platform(stack, "local", 1)
    marker = tmp_path / "forged-ran"
    function_id = platform.api.register(ff.write_marker)
    forged_id = str(uuid.uuid4())
    redis_client.xadd(keys.STREAM, {"task_id": forged_id, "function_id": function_id, "owner": "",
                                    "arguments": dumps(((str(marker),), {})), "timeout": "", "attempt": "1"})
    sentinel = platform.api.submit(function_id, str(tmp_path / "sentinel"), "ok")
    assert platform.api.value(sentinel) == "ok"
    wait_until(lambda: "refused stream entry" in platform.dispatcher.output(), timeout=10)
    assert not marker.exists()
    assert services.task_store().read(forged_id) is None
    wait_until(lambda: redis_client.xlen(keys.STREAM) == 0, timeout=10)  # removed, not left to rot


def test_a_function_that_crashes_its_process_runs_at_most_retries_plus_one_times(stack, tmp_path):
    platform = start_platform(stack, "local", 1, "--retries", "2")
    marks = tmp_path / "runs"
    task_id = platform.api.submit(platform.api.register(ff.count_then_exit), str(marks), 3)
    failure = platform.api.failure(task_id, wait=60)
    assert "process exited with code 3 (attempt 3 of 3)" in str(failure)
    assert marks.read_text().split() == ["crash"] * 3
