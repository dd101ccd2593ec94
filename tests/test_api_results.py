"""POST /results: many tasks' results in one request, owner-checked, woken by the done channels."""

from __future__ import annotations

import threading
import time
import uuid

import dill
import pytest

from functions.taskstore import keys
from tests.helpers import finish_task
from tests.test_api import execute, register
from workers.serialization import deserialize, serialize

pytestmark = pytest.mark.django_db


def queue(client, count: int) -> list[str]:
    function_id = register(client)
    return [execute(client, function_id, i, 1).json()["task_id"] for i in range(count)]


def results(client, task_ids, **options):
    return client.post("/results", {"task_ids": task_ids, **options}, format="json")


def test_final_tasks_come_with_their_results_and_the_others_as_pending(alice, redis_client):
    ids = queue(alice, 3)
    finish_task(ids[0], "COMPLETED", dill.dumps(10), "", 60)
    finish_task(ids[2], "FAILED", dill.dumps(ValueError("bad")), "ValueError: bad", 60)
    body = results(alice, ids).json()
    by_id = {r["task_id"]: r for r in body["results"]}
    assert set(by_id) == {ids[0], ids[2]} and body["pending"] == {ids[1]: "QUEUED"}
    assert deserialize(by_id[ids[0]]["result"]) == 10
    assert by_id[ids[2]]["status"] == "FAILED" and by_id[ids[2]]["error"] == "ValueError: bad"


def test_a_wait_answers_once_enough_tasks_finish(alice, redis_client):
    ids = queue(alice, 4)

    def finish_soon():
        time.sleep(0.2)  # the request below is waiting by then
        for task_id in ids:
            finish_task(task_id, "COMPLETED", dill.dumps(task_id), "", 60)

    finisher = threading.Thread(target=finish_soon)
    finisher.start()
    began = time.monotonic()
    body = results(alice, ids, wait=20, min=4).json()
    finisher.join()
    assert time.monotonic() - began < 10
    assert body["pending"] == {} and sorted(deserialize(r["result"]) for r in body["results"]) == sorted(ids)


def test_a_wait_that_runs_out_answers_what_is_final(alice, redis_client):
    ids = queue(alice, 2)
    finish_task(ids[0], "COMPLETED", dill.dumps(1), "", 60)
    began = time.monotonic()
    body = results(alice, ids, wait=0.3, min=2).json()
    assert 0.3 <= time.monotonic() - began < 5
    assert [r["task_id"] for r in body["results"]] == [ids[0]] and body["pending"] == {ids[1]: "QUEUED"}


def test_tasks_redis_forgot_come_from_the_database(alice, redis_client):
    ids = queue(alice, 2)
    redis_client.delete(keys.task_key(ids[1]))
    assert results(alice, ids).json()["pending"] == {ids[0]: "QUEUED", ids[1]: "QUEUED"}


def test_anyone_elses_or_unknown_task_is_404(alice, bob):
    ids = queue(alice, 2)
    response = results(bob, ids, wait=5)
    assert response.status_code == 404 and ids[0] in response.json()["detail"]
    unknown = str(uuid.uuid4())
    response = results(alice, [ids[0], unknown])
    assert response.status_code == 404 and unknown in response.json()["detail"]


@pytest.mark.parametrize("body, field", [
    ({}, "task_ids"),
    ({"task_ids": []}, "task_ids"),
    ({"task_ids": ["nope"]}, "task_ids"),
    ({"task_ids": [str(uuid.uuid4())], "wait": 61}, "wait"),
    ({"task_ids": [str(uuid.uuid4())], "wait": "soon"}, "wait"),
    ({"task_ids": [str(uuid.uuid4())], "min": 0}, "min"),
])
def test_bad_requests_are_a_json_400_naming_the_field(alice, body, field):
    response = alice.post("/results", body, format="json")
    assert response.status_code == 400 and field in response.json()


def test_listed_in_the_openapi_schema(alice):
    schema = alice.get("/schema").content.decode()
    assert "/results" in schema and "ResultsRequest" in schema


def test_the_lean_json_path_keeps_drf_behaviour_for_other_inputs(alice):
    function_id = register(alice)
    form = alice.post("/execute_batch", {"function_id": function_id,
                                         "payloads": [serialize(((1, 2), {})), serialize(((3, 4), {}))]})
    assert form.status_code == 201 and len(form.json()["task_ids"]) == 2  # a form post, a list field
    listed = alice.post("/results", [1, 2], format="json")
    assert listed.status_code == 400 and "non_field_errors" in listed.json()
    html = alice.get(f"/status/{form.json()['task_ids'][0]}", HTTP_ACCEPT="text/html")
    assert html.status_code == 200 and html["Content-Type"].startswith("text/html")
    browser = "text/html,application/xhtml+xml,*/*;q=0.8"
    as_json = alice.get(f"/status/{form.json()['task_ids'][0]}?format=json", HTTP_ACCEPT=browser)
    assert as_json["Content-Type"].startswith("application/json") and as_json.json()["status"] == "QUEUED"
    accented = alice.post("/execute_function", {"function_id": "é"}, format="json").json()
    assert accented == {"function_id": ["'é' is not a valid id."], "payload": ["This field is required."]}
