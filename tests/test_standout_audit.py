"""The audit trail (issue 16, item 3): who did what, when, through which door; append-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from functions import services
from functions.models import AuditEntry, Task, Worker
from tests import fixtures_functions as ff
from workers.serialization import serialize

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(redis_client):
    return User.objects.create_user("alice", password="pw")


@pytest.fixture
def api(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    return client


def trail(**filters) -> list[tuple]:
    rows = AuditEntry.objects.filter(**filters).order_by("id")
    return [(e.actor_name, e.via, e.action, e.object_type) for e in rows]


def test_api_calls_leave_who_did_what(api, alice):
    function_id = api.post("/register_function", {"name": "add", "payload": serialize(ff.add)},
                           format="json").json()["function_id"]
    task_id = api.post("/execute_function", {"function_id": function_id, "payload": serialize(((1, 2), {}))},
                       format="json").json()["task_id"]
    batch = api.post("/execute_batch", {"function_id": function_id, "payloads": [serialize(((1, 2), {}))] * 3},
                     format="json").json()["task_ids"]
    assert api.post(f"/cancel/{task_id}").status_code == 200
    assert trail(via="api") == [("alice", "api", "registered", "function"), ("alice", "api", "ran", "task"),
                                ("alice", "api", "ran", "function"), ("alice", "api", "cancelled", "task")]
    ran_batch = AuditEntry.objects.get(action="ran", object_type="function")
    assert ran_batch.object_id == function_id
    assert ran_batch.detail["tasks"] == 3 and ran_batch.detail["first_task"] == batch[0]
    assert AuditEntry.objects.get(action="ran", object_type="task").object_id == task_id
    assert AuditEntry.objects.get(action="registered").detail == {"name": "add@1", "new_version": True}


def test_a_refused_submit_leaves_no_entry(api):
    function_id = api.post("/register_function", {"name": "add", "payload": serialize(ff.add)},
                           format="json").json()["function_id"]
    Task.objects.all()  # nothing queued yet
    assert api.post("/execute_function", {"function_id": function_id, "payload": "not base64!"},
                    format="json").status_code == 400
    assert not AuditEntry.objects.filter(action="ran").exists()


def test_admin_actions_are_in_the_trail(admin_client, admin_user, alice):
    function = services.function_register(owner=alice, name="add", payload=serialize(ff.add).encode())
    tasks = services.task_submit_batch(owner=alice, function=function, payloads=[b"\x80\x04N."] * 3)
    post = {"index": 0}
    admin_client.post("/admin/functions/task/", {**post, "action": "cancel_tasks",
                                                 "_selected_action": [str(tasks[0].id)]})
    admin_client.post("/admin/functions/task/", {**post, "action": "retry_tasks",
                                                 "_selected_action": [str(tasks[0].id)]})
    admin_client.post("/admin/functions/task/", {**post, "action": "purge_queue", "post": "yes",
                                                 "_selected_action": [str(tasks[1].id)]})
    worker = Worker.objects.create(identity="w-1", mode="push", processes=2)
    admin_client.post("/admin/functions/worker/", {**post, "action": "drain_workers",
                                                   "_selected_action": [str(worker.pk)]})
    assert trail(via="admin") == [("admin", "admin", "cancelled", "task"), ("admin", "admin", "retried", "task"),
                                  ("admin", "admin", "purged", "queue"), ("admin", "admin", "drained", "worker")]
    assert AuditEntry.objects.get(action="drained").object_id == "w-1"
    assert AuditEntry.objects.get(action="purged").detail == {"tasks": 3}  # two left plus the retry


def test_tokens_created_and_revoked_through_the_admin_and_the_command_line(admin_client, alice):
    assert admin_client.post("/admin/authtoken/tokenproxy/add/", {"user": alice.pk}).status_code == 302
    assert Token.objects.filter(user=alice).exists()
    assert admin_client.post(f"/admin/authtoken/tokenproxy/{alice.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Token.objects.filter(user=alice).exists()
    call_command("drf_create_token", "alice")
    assert trail(object_type="token") == [("admin", "admin", "token created", "token"),
                                          ("admin", "admin", "token revoked", "token"),
                                          ("", "cli", "token created", "token")]
    assert all(e.detail == {"user": "alice"} for e in AuditEntry.objects.filter(object_type="token"))


def test_entries_are_append_only_everywhere(admin_client, api):
    api.post("/register_function", {"name": "add", "payload": serialize(ff.add)}, format="json")
    entry = AuditEntry.objects.get(action="registered")
    entry.action = "nothing happened"
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()
    with pytest.raises(PermissionError):
        AuditEntry.objects.filter(pk=entry.pk).update(action="x")
    with pytest.raises(PermissionError):
        AuditEntry.objects.all().delete()
    assert admin_client.post(f"/admin/functions/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    admin_client.post(f"/admin/functions/auditentry/{entry.pk}/change/", {"action": "edited"})
    assert AuditEntry.objects.get(pk=entry.pk).action == "registered"
    assert admin_client.get("/admin/functions/auditentry/add/").status_code == 403


def test_admin_lists_and_filters_the_trail(admin_client, api, alice):
    api.post("/register_function", {"name": "add", "payload": serialize(ff.add)}, format="json")

    def listed(query: str = "") -> list[str]:
        page = admin_client.get("/admin/functions/auditentry/" + query)
        assert page.status_code == 200
        return [e.action for e in page.context["cl"].result_list]

    assert listed() == ["registered", "token created"]
    assert listed("?action=registered") == ["registered"]
    assert listed(f"?actor__id__exact={alice.pk}") == ["registered"]  # the fixture's token was made by code
    function_id = AuditEntry.objects.get(action="registered").object_id
    assert listed(f"?q={function_id}") == ["registered"]
    assert listed("?object_type=token") == ["token created"]
