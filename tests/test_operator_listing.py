"""Listing over the API: GET /tasks, GET /functions, GET and DELETE /functions/<id>, through
HTTP, and the client's methods against a real server."""

from __future__ import annotations

import datetime

import pytest

from functions.client import APIError, FaaSClient
from functions.models import Task
from functions.taskstore import keys
from tests import fixtures_functions as ff
from workers.serialization import serialize

pytestmark = pytest.mark.django_db


def add(a, b):
    return a + b


def register(client, name="add") -> str:
    response = client.post("/register_function", {"name": name, "payload": serialize(add)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["function_id"]


def submit(client, function_id) -> str:
    response = client.post("/execute_function", {"function_id": function_id, "payload": serialize(((1, 2), {}))},
                           format="json")
    assert response.status_code == 201, response.content
    return response.json()["task_id"]


def test_tasks_lists_own_tasks_newest_first_and_hides_other_users(alice, bob):
    fid = register(alice)
    mine = [submit(alice, fid) for _ in range(3)]
    submit(bob, register(bob))
    body = alice.get("/tasks").json()
    assert [row["task_id"] for row in body["results"]] == mine[::-1]
    assert body["next"] is None
    row = body["results"][0]
    assert row["function_id"] == fid and row["function_name"] == "add" and row["status"] == "QUEUED"
    assert set(row) == {"task_id", "function_id", "function_name", "status", "attempts", "created_at",
                        "started_at", "finished_at", "error"}


def test_tasks_cursor_pages_cover_every_task_once(alice):
    fid = register(alice)
    ids = {submit(alice, fid) for _ in range(7)}
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = alice.get("/tasks", params).json()
        seen += [row["task_id"] for row in body["results"]]
        pages += 1
        cursor = body["next"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == 7 and set(seen) == ids


def test_tasks_filters_by_status_function_and_time(alice):
    f1, f2 = register(alice, "one"), register(alice, "two")
    a, b, c = submit(alice, f1), submit(alice, f1), submit(alice, f2)
    Task.objects.filter(id=b).update(status="FAILED", error="ValueError: no\nTraceback ...")
    Task.objects.filter(id=c).update(created_at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    failed = alice.get("/tasks", {"status": "FAILED"}).json()["results"]
    assert [r["task_id"] for r in failed] == [b]
    assert failed[0]["error"] == "ValueError: no"
    assert {r["task_id"] for r in alice.get("/tasks", {"function": f2}).json()["results"]} == {c}
    assert {r["task_id"] for r in alice.get("/tasks", {"since": "2021-01-01T00:00:00Z"}).json()["results"]} == {a, b}
    assert {r["task_id"] for r in alice.get("/tasks", {"until": "2021-01-01T00:00:00Z"}).json()["results"]} == {c}


def test_tasks_shows_the_live_status_of_unfinished_rows(alice, redis_client):
    task_id = submit(alice, register(alice))
    redis_client.hset(keys.task_key(task_id), "status", "RUNNING")  # the database row lags one flush
    assert alice.get("/tasks").json()["results"][0]["status"] == "RUNNING"


@pytest.mark.parametrize("query, field", [({"status": "DONE"}, "status"), ({"limit": 0}, "limit"),
                                          ({"since": "yesterday"}, "since"), ({"cursor": "garbage"}, "cursor"),
                                          ({"function": "nope"}, "function")])
def test_tasks_bad_filters_answer_400_with_a_sentence(alice, query, field):
    response = alice.get("/tasks", query)
    assert response.status_code == 400
    assert field in response.json()


def test_functions_list_detail_and_counts(alice, bob):
    f1, f2 = register(alice, "one"), register(alice, "two")
    register(bob, "theirs")
    submit(alice, f1)
    done = submit(alice, f1)
    Task.objects.filter(id=done).update(status="COMPLETED")
    body = alice.get("/functions").json()
    assert [(r["function_id"], r["name"]) for r in body["results"]] == [(f2, "two"), (f1, "one")]
    assert body["next"] is None
    detail = alice.get(f"/functions/{f1}").json()
    assert detail["name"] == "one" and detail["payload_size"] > 0
    assert detail["tasks"] == {"QUEUED": 1, "RUNNING": 0, "COMPLETED": 1, "FAILED": 0}
    assert bob.get(f"/functions/{f1}").status_code == 404
    assert alice.get("/functions/not-an-id").status_code == 404


def test_delete_function_refused_while_tasks_unfinished_then_removes_it(alice, bob, redis_client):
    fid = register(alice)
    task_id = submit(alice, fid)
    assert bob.delete(f"/functions/{fid}").status_code == 404
    refused = alice.delete(f"/functions/{fid}")
    assert refused.status_code == 409
    assert "1 unfinished task" in refused.json()["detail"]
    Task.objects.filter(id=task_id).update(status="FAILED")
    response = alice.delete(f"/functions/{fid}")
    assert response.status_code == 200
    assert response.json() == {"function_id": fid, "deleted_tasks": 1}
    assert alice.get(f"/functions/{fid}").status_code == 404
    assert not redis_client.exists(keys.function_key(fid))
    submitted = alice.post("/execute_function", {"function_id": fid, "payload": serialize(((1, 2), {}))},
                           format="json")
    assert submitted.status_code == 404


def test_listing_is_in_the_openapi_schema(alice):
    schema = alice.get("/schema", HTTP_ACCEPT="application/json").json()
    paths = {path.rstrip("/"): ops for path, ops in schema["paths"].items()}
    assert {"/tasks", "/functions", "/functions/{function_id}"} <= set(paths)
    assert {"get", "delete"} <= set(paths["/functions/{function_id}"])
    assert {p["name"] for p in paths["/tasks"]["get"]["parameters"]} >= {"status", "function", "since", "cursor"}


def test_client_lists_tasks_and_functions_and_deletes_against_a_running_server(stack):
    with FaaSClient(stack.web()) as client:
        fid = client.register(ff.add)
        ids = [client.submit(fid, 1, b=i) for i in range(5)]
        assert [row["task_id"] for row in client.tasks(page_size=2)] == ids[::-1]
        assert [row["function_id"] for row in client.functions()] == [fid]
        assert client.function(fid)["tasks"]["QUEUED"] == 5
        assert list(client.tasks(status="COMPLETED")) == []
        with pytest.raises(APIError) as refused:
            client.delete_function(fid)
        assert refused.value.status_code == 409
        for task_id in ids:
            client.cancel(task_id)
        assert client.delete_function(fid) == 5
        assert list(client.functions()) == []
