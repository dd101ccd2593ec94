"""Versioned, content-addressed functions (issue 16, item 2): same bytes under the same name
are one version; `name` runs the latest, `name@N` a pinned one; the admin shows versions."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from functions.models import Function
from tests import fixtures_standout as fs
from tests.platform import start_platform
from workers.serialization import serialize


def register(client, fn, name="calc"):
    response = client.post("/register_function", {"name": name, "payload": serialize(fn)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db
def test_same_bytes_same_name_is_the_same_version(alice, bob):
    first = register(alice, fs.version_one)
    again = register(alice, fs.version_one)
    assert first == {"function_id": first["function_id"], "name": "calc", "version": 1, "new_version": True}
    assert again == {**first, "new_version": False}
    second = register(alice, fs.version_two)
    assert second["version"] == 2 and second["function_id"] != first["function_id"]
    assert register(alice, fs.version_one) == {**first, "new_version": False}  # an old version stays itself
    assert register(alice, fs.version_one, name="other")["version"] == 1  # another name: its own history
    assert register(bob, fs.version_one)["function_id"] != first["function_id"]  # another owner: never shared
    assert Function.objects.count() == 4


@pytest.mark.django_db
def test_names_that_look_pinned_are_refused_and_bad_references_are_sentences(alice):
    bad = alice.post("/register_function", {"name": "calc@2", "payload": serialize(fs.version_one)}, format="json")
    assert bad.status_code == 400 and "picks a version" in str(bad.json())
    register(alice, fs.version_one)
    call = serialize(((), {}))
    unknown = alice.post("/execute_function", {"function": "nope", "payload": call}, format="json")
    assert unknown.status_code == 404 and unknown.json()["detail"] == "No function named 'nope'."
    missing = alice.post("/execute_function", {"function": "calc@7", "payload": call}, format="json")
    assert missing.status_code == 404 and "has no version 7; its latest is calc@1" in missing.json()["detail"]
    both = alice.post("/execute_function", {"function": "calc", "function_id": str(uuid.uuid4()), "payload": call},
                      format="json")
    assert both.status_code == 400 and "one of the two" in str(both.json())


@pytest.mark.django_db
def test_version_history_lists_tasks_per_version_and_hides_others(alice, bob):
    register(alice, fs.version_one)
    register(alice, fs.version_two)
    call = serialize(((), {}))
    for reference in ("calc", "calc", "calc@1"):
        assert alice.post("/execute_function", {"function": reference, "payload": call},
                          format="json").status_code == 201
    history = alice.get("/functions/calc/versions").json()
    assert [(v["version"], v["tasks"]) for v in history] == [(2, 2), (1, 1)]
    assert bob.get("/functions/calc/versions").status_code == 404


def test_name_runs_the_latest_and_name_at_n_the_pinned_version(stack):
    platform = start_platform(stack, "local", 1)
    api = platform.api

    def run(reference: str) -> str:
        answer = api.http.post(api.url + "/execute_function", json={"function": reference,
                                                                    "payload": serialize(((), {}))})
        assert answer.status_code == 201, answer.text
        return api.value(answer.json()["task_id"])

    def register_as_calc(fn) -> dict:
        return api.http.post(api.url + "/register_function", json={"name": "calc", "payload": serialize(fn)}).json()

    register_as_calc(fs.version_one)
    assert run("calc") == "one"
    register_as_calc(fs.version_two)
    assert run("calc") == "two"
    assert run("calc@1") == "one"
    batch = api.http.post(api.url + "/execute_batch", json={"function": "calc@1",
                                                            "payloads": [serialize(((), {}))] * 2})
    assert [api.value(t) for t in batch.json()["task_ids"]] == ["one", "one"]


def test_racing_registrations_make_one_row_per_distinct_payload(stack):
    url = stack.web()

    def post(body):
        with requests.Session() as http:
            return http.post(url + "/register_function", json=body, timeout=30)

    for name in ("calc", "again", "thrice"):  # a race lost only sometimes still shows
        same = {"name": name, "payload": serialize(fs.version_one)}
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, [same] * 12))
        assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
        assert len({a.json()["function_id"] for a in answers}) == 1
        assert {a.json()["version"] for a in answers} == {1}
    distinct = [{"name": "many", "payload": serialize(n)} for n in range(10)]  # ten different payloads
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, distinct))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert sorted(a.json()["version"] for a in answers) == list(range(1, 11))


@pytest.mark.django_db
def test_admin_shows_versions_and_the_tasks_each_ran(admin_client, alice):
    one = register(alice, fs.version_one)
    two = register(alice, fs.version_two)
    alice.post("/execute_function", {"function": "calc@1", "payload": serialize(((), {}))}, format="json")
    page = admin_client.get(f"/admin/functions/function/{two['function_id']}/change/").content.decode()
    assert "calc@2" in page and "calc@1" in page
    assert f"function__id__exact={one['function_id']}\">1 task(s)" in page
    assert f"function__id__exact={two['function_id']}\">0 task(s)" in page
    tasks = admin_client.get("/admin/functions/task/").content.decode()
    assert "calc@1" in tasks


@pytest.mark.django_db
def test_listing_detail_and_version_routes_coexist_after_the_operator_merge(alice):
    """GET /tasks (operator's listing), /tasks/<id> and /tasks/<id>/events (issue 16),
    /functions/<id> (operator's detail) and /functions/<name>/versions each answer as themselves."""
    first = register(alice, fs.version_one)
    task = alice.post("/execute_function", {"function": "calc", "payload": serialize(((2,), {}))}, format="json")
    assert task.status_code == 201, task.content
    task_id = task.json()["task_id"]
    listed = alice.get("/tasks")
    assert listed.status_code == 200 and [t["task_id"] for t in listed.json()["results"]] == [task_id]
    detail = alice.get(f"/tasks/{task_id}/")
    assert detail.status_code == 200 and detail.json()["function"] == "calc" and detail.json()["version"] == 1
    assert alice.get(f"/tasks/{uuid.uuid4()}/events").status_code == 404
    function = alice.get(f"/functions/{first['function_id']}")
    assert function.status_code == 200 and function.json()["name"] == "calc"
    versions = alice.get("/functions/calc/versions")
    assert versions.status_code == 200 and [v["version"] for v in versions.json()] == [1]
