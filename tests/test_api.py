"""The REST contract of the four endpoints and its bad-input cases, through HTTP."""

from __future__ import annotations

import base64
import codecs
import threading
import time
import uuid

import dill
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from functions.models import Task
from functions.taskstore import keys
from functions.taskstore.records import parse_done
from tests.helpers import finish_task
from workers.protocol import Result
from workers.serialization import deserialize, serialize

pytestmark = pytest.mark.django_db


def add(a, b):
    return a + b


def register(client, fn=add, name="add") -> str:
    response = client.post("/register_function", {"name": name, "payload": serialize(fn)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["function_id"]


def execute(client, function_id, *args, **kwargs):
    return client.post("/execute_function", {"function_id": function_id, "payload": serialize((args, kwargs))},
                       format="json")


def test_register_execute_status_result(alice, redis_client):
    function_id = register(alice)
    uuid.UUID(function_id)
    response = execute(alice, function_id, 1, 2)
    assert response.status_code == 201
    task_id = response.json()["task_id"]
    assert alice.get(f"/status/{task_id}").json() == {"task_id": task_id, "status": "QUEUED"}
    assert alice.get(f"/result/{task_id}").json() == {"task_id": task_id, "status": "QUEUED", "result": None}


def test_submitted_task_is_queued_in_database_redis_hash_and_stream(alice, redis_client):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    assert Task.objects.get(id=task_id).status == "QUEUED"
    assert redis_client.hget(keys.task_key(task_id), "status") == b"QUEUED"
    entries = redis_client.xrange(keys.STREAM)
    assert [fields[b"task_id"].decode() for _id, fields in entries] == [task_id]
    assert dill.loads(entries[0][1][b"arguments"]) == ((1, 2), {})


def test_codecs_base64_with_newlines_and_trailing_slash_paths(alice):
    payload = codecs.encode(dill.dumps(add), "base64").decode()
    assert "\n" in payload
    response = alice.post("/register_function/", {"name": "add", "payload": payload}, format="json")
    assert response.status_code == 201
    args = codecs.encode(dill.dumps(((1, 2), {})), "base64").decode()
    response = alice.post("/execute_function/", {"function_id": response.json()["function_id"], "payload": args},
                          format="json")
    assert response.status_code == 201
    assert alice.get(f"/status/{response.json()['task_id']}/").status_code == 200


def test_finished_task_result_is_serialized_value(alice, redis_client):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    finish_task(task_id, "COMPLETED", dill.dumps(3), "", 60)
    body = alice.get(f"/result/{task_id}").json()
    assert body["status"] == "COMPLETED" and deserialize(body["result"]) == 3


def test_failed_task_result_is_exception_with_error_text(alice, redis_client):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    finish_task(task_id, "FAILED", dill.dumps(ValueError("bad")), "ValueError: bad", 60)
    body = alice.get(f"/result/{task_id}").json()
    assert body["status"] == "FAILED" and body["error"] == "ValueError: bad"
    assert isinstance(deserialize(body["result"]), ValueError)


def test_status_falls_back_to_database_when_redis_forgot(alice, redis_client):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    redis_client.delete(keys.task_key(task_id))
    assert alice.get(f"/status/{task_id}").json()["status"] == "QUEUED"


@pytest.mark.parametrize("body, fragment", [
    ({}, "name"),
    ({"name": "f"}, "payload"),
    ({"name": "f", "payload": 12}, "payload"),
    ({"name": "f", "payload": "not base64!!"}, "base64"),
    ({"name": "f", "payload": base64.b64encode(b"plain text, not a pickle").decode()}, "pickle"),
    ({"name": "f", "payload": base64.b64encode(dill.dumps(len) + b"junk").decode()}, "after the end"),
    ({"name": "f", "payload": ""}, "payload"),
])
def test_register_rejects_bad_input(alice, body, fragment):
    response = alice.post("/register_function", body, format="json")
    assert response.status_code == 400
    assert fragment in response.content.decode()


def test_not_json_is_a_json_400(alice):
    response = alice.post("/register_function", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")


def test_execute_rejects_bad_payload_and_ids(alice):
    function_id = register(alice)
    assert alice.post("/execute_function", {"function_id": function_id, "payload": "%%%"},
                      format="json").status_code == 400
    assert alice.post("/execute_function", {"function_id": "nope", "payload": serialize(((), {}))},
                      format="json").status_code == 400
    assert alice.post("/execute_function", {"payload": serialize(((), {}))}, format="json").status_code == 400
    response = execute(alice, str(uuid.uuid4()))
    assert response.status_code == 404 and "detail" in response.json()


@pytest.mark.parametrize("path", ["/status/", "/result/"])
def test_unknown_and_malformed_task_ids_are_404(alice, path):
    for task_id in [str(uuid.uuid4()), "not-a-uuid"]:
        response = alice.get(path + task_id)
        assert response.status_code == 404
        assert "detail" in response.json()


def test_payload_over_the_cap_is_413(alice, settings):
    settings.FAAS_MAX_PAYLOAD_BYTES = 1000
    response = alice.post("/register_function", {"name": "big", "payload": serialize(b"x" * 5000)}, format="json")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_body_over_django_upload_limit_is_json_413(alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = alice.post("/register_function", {"name": "big", "payload": serialize(b"x" * 5000)}, format="json")
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")


def test_unknown_path_is_json_404(alice):
    response = alice.get("/no/such/thing")
    assert response.status_code == 404 and response.json()["detail"]


def test_authentication_required_unless_anonymous_is_enabled(redis_client, settings):
    settings.FAAS_ALLOW_ANONYMOUS = False
    anonymous = APIClient()
    assert anonymous.post("/register_function", {"name": "f", "payload": serialize(add)},
                          format="json").status_code in (401, 403)
    settings.FAAS_ALLOW_ANONYMOUS = True
    task_id = execute(anonymous, register(anonymous), 1, 2).json()["task_id"]
    assert anonymous.get(f"/status/{task_id}").status_code == 200


def test_users_cannot_see_or_run_each_others_work(alice, bob):
    function_id = register(alice)
    task_id = execute(alice, function_id, 1, 2).json()["task_id"]
    assert execute(bob, function_id, 1, 2).status_code == 404
    assert bob.get(f"/status/{task_id}").status_code == 404
    assert bob.get(f"/result/{task_id}").status_code == 404
    assert bob.post(f"/cancel/{task_id}").status_code == 404
    assert alice.get(f"/status/{task_id}").status_code == 200


class WritesAFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_payload_is_never_unpickled_by_the_web_server(alice, tmp_path):
    marker = tmp_path / "unpickled"
    payload = base64.b64encode(dill.dumps(WritesAFileWhenUnpickled(str(marker)))).decode()
    assert alice.post("/register_function", {"name": "evil", "payload": payload}, format="json").status_code == 201
    function_id = register(alice)
    response = alice.post("/execute_function", {"function_id": function_id, "payload": payload}, format="json")
    assert response.status_code == 201
    assert not marker.exists()


def test_batch_submit_returns_ids_in_order(alice, redis_client):
    function_id = register(alice)
    payloads = [serialize(((i, i), {})) for i in range(50)]
    response = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads}, format="json")
    assert response.status_code == 201
    task_ids = response.json()["task_ids"]
    streamed = [f[b"task_id"].decode() for _id, f in redis_client.xrange(keys.STREAM)]
    assert streamed == task_ids and Task.objects.filter(id__in=task_ids).count() == 50


def test_openapi_docs_and_browsable_api(alice):
    assert alice.get("/docs").status_code == 200
    schema = alice.get("/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200 and "/register_function" in schema.content.decode()
    page = alice.get("/register_function", HTTP_ACCEPT="text/html")
    assert page.status_code == 405 and b"<html" in page.content.lower()


def test_cancel_queued_only_refuses_a_started_task(alice, redis_client):
    function_id = register(alice)
    queued = execute(alice, function_id, 1, 2).json()["task_id"]
    started = execute(alice, function_id, 3, 4).json()["task_id"]
    redis_client.hset(keys.task_key(started), "status", "RUNNING")
    assert alice.post(f"/cancel/{started}?queued_only=1").status_code == 409
    assert alice.get(f"/status/{started}").json()["status"] == "RUNNING"
    response = alice.post(f"/cancel/{queued}?queued_only=1")
    assert response.status_code == 200 and response.json()["status"] == "FAILED"
    assert Task.objects.get(id=queued).status == "FAILED"
    assert alice.post(f"/cancel/{queued}").status_code == 409  # already finished
    assert alice.post(f"/cancel/{started}").status_code == 200  # a running task can be stopped


def test_database_failure_on_submit_is_503_and_the_queued_task_never_completes(alice, redis_client, monkeypatch):
    from django.db import OperationalError

    function_id = register(alice)

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Task.objects, "bulk_create", locked)
    response = execute(alice, function_id, 1, 2)
    assert response.status_code == 503 and "Retry" in response.json()["detail"]
    [(_entry, fields)] = redis_client.xrange(keys.STREAM)
    task_key = keys.task_key(fields[b"task_id"].decode())
    assert redis_client.hget(task_key, "status") == b"FAILED"
    assert b"could not be recorded" in redis_client.hget(task_key, "error")


@pytest.mark.django_db(transaction=True)  # the foreign key is checked at a real commit
def test_function_deleted_after_use_is_404_not_500(alice):
    from functions.models import Function

    function_id = register(alice)
    assert execute(alice, function_id, 1, 2).status_code == 201  # its owner is now remembered
    Function.objects.filter(id=function_id).delete()
    response = execute(alice, function_id, 1, 2)
    assert response.status_code == 404 and "detail" in response.json()


def test_execute_with_wait_answers_with_the_result_once_the_task_finishes(alice, redis_client):
    function_id = register(alice)

    def finish_soon():  # stands in for a dispatcher: the final state arrives during the wait
        task_id = wait_for_queued(redis_client)
        finish_task(task_id, "COMPLETED", dill.dumps(3), "", 60)

    finisher = threading.Thread(target=finish_soon)
    finisher.start()
    response = alice.post("/execute_function?wait=10", {"function_id": function_id, "payload": serialize(((1, 2), {}))},
                          format="json")
    finisher.join()
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "COMPLETED" and deserialize(body["result"]) == 3
    assert Task.objects.filter(id=body["task_id"]).exists()


def test_execute_with_wait_that_runs_out_answers_the_current_status(alice):
    function_id = register(alice)
    began = time.monotonic()
    response = alice.post("/execute_function?wait=0.3", {"function_id": function_id,
                                                          "payload": serialize(((1, 2), {}))}, format="json")
    assert response.status_code == 201 and 0.3 <= time.monotonic() - began < 5
    assert response.json() == {"task_id": response.json()["task_id"], "status": "QUEUED", "result": None}


@pytest.mark.parametrize("wait", ["soon", "-1", "61"])
def test_execute_with_a_bad_wait_is_refused_before_anything_is_queued(alice, wait):
    function_id = register(alice)
    response = alice.post(f"/execute_function?wait={wait}", {"function_id": function_id,
                                                              "payload": serialize(((1, 2), {}))}, format="json")
    assert response.status_code == 400 and "wait" in response.json()
    assert not Task.objects.exists()


def wait_for_queued(r, timeout: float = 10.0) -> str:
    """The id of the first task that appears on the stream."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entries = r.xrange(keys.STREAM, count=1)
        if entries:
            return entries[0][1][b"task_id"].decode()
        time.sleep(0.01)
    raise AssertionError("no task was queued")


@pytest.fixture
def fresh_token_memory():
    from functions.authentication import CachedTokenAuthentication

    CachedTokenAuthentication._seen.clear()
    yield
    CachedTokenAuthentication._seen.clear()


def test_a_checked_token_is_not_looked_up_again_within_the_window(alice, fresh_token_memory,
                                                                   django_assert_num_queries):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]  # its status comes from Redis
    with django_assert_num_queries(0):
        assert alice.get(f"/status/{task_id}").status_code == 200


def test_a_deleted_token_is_refused_once_the_window_has_passed(alice, fresh_token_memory, settings):
    settings.FAAS_TOKEN_CACHE_SECONDS = 0.3
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    Token.objects.all().delete()
    assert alice.get(f"/status/{task_id}").status_code == 200  # the documented window
    time.sleep(0.4)
    assert alice.get(f"/status/{task_id}").status_code == 401


def test_without_the_window_a_deleted_token_is_refused_at_once(alice, fresh_token_memory, settings):
    settings.FAAS_TOKEN_CACHE_SECONDS = 0
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    Token.objects.all().delete()
    assert alice.get(f"/status/{task_id}").status_code == 401


@pytest.mark.parametrize("size", [10, 200_000], ids=["carried-by-the-done-message", "read-back-from-redis"])
def test_a_waiting_long_poll_answers_with_the_whole_result(alice, redis_client, size):
    task_id = execute(alice, register(alice), 1, 2).json()["task_id"]
    value, error = "x" * size, "ValueError: " + "é" * 50

    def finish_soon():
        time.sleep(0.2)  # the request below is waiting by then
        finish_task(task_id, "FAILED", dill.dumps(value), error, 60)

    finisher = threading.Thread(target=finish_soon)
    finisher.start()
    body = alice.get(f"/result/{task_id}?wait=10").json()
    finisher.join()
    assert body["status"] == "FAILED" and body["error"] == error
    assert deserialize(body["result"]) == value


def test_done_messages_carry_small_outcomes_only(redis_client):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.done_channel("small"), keys.done_channel("large"))
    finish_task("small", "COMPLETED", b"\x80\x04K\x03.", "", 60)
    finish_task("large", "COMPLETED", b"x" * (keys.DONE_INLINE_BYTES + 1), "", 60)
    messages = [next_message(pubsub) for _ in range(2)]
    pubsub.close()
    assert parse_done("small", messages[0]["data"]) == Result("small", "COMPLETED", b"\x80\x04K\x03.", "")
    assert messages[1]["data"] == b"COMPLETED" and parse_done("large", messages[1]["data"]) is None


def next_message(pubsub, timeout: float = 5.0) -> dict:
    """The next published message (get_message answers None for the subscribe confirmations)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = pubsub.get_message(timeout=0.5)
        if message is not None:
            return message
    raise AssertionError("no message was published")


def test_execute_with_wait_still_returns_the_task_id_when_redis_fails_during_the_wait(alice, monkeypatch):
    import redis

    from functions import services

    def redis_went_away(**kwargs):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(services, "task_wait", redis_went_away)
    response = alice.post("/execute_function?wait=5", {"function_id": register(alice),
                                                        "payload": serialize(((1, 2), {}))}, format="json")
    assert response.status_code == 201  # queued: the client must learn its id, not a 503
    assert set(response.json()) == {"task_id"}
    assert Task.objects.filter(id=response.json()["task_id"]).exists()
