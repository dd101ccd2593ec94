"""The admin: lists, task detail, the dashboard page, and each action through the changelist POST."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from functions import services
from functions.models import Task, Worker
from functions.taskstore import keys
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from workers import serialization

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/functions/task/"


@pytest.fixture
def owner(redis_client):
    return User.objects.create_user("alice", password="pw")


@pytest.fixture
def function(owner):
    return services.function_register(owner=owner, name="add", payload=serialization.dumps(ff.add))


def submit(owner, function, n: int = 1) -> list[Task]:
    return services.task_submit_batch(owner=owner, function=function,
                                      payloads=[serialization.dumps(((i, 1), {})) for i in range(n)])


def fail(task: Task, error: str = "ValueError: bad value\nTraceback (most recent call last):\n  File \"x.py\"") -> Task:
    Task.objects.filter(id=task.id).update(status=Task.Status.FAILED, error=error, result=b"r", result_size=1)
    services.task_store().redis.hset(keys.task_key(task.id), "status", "FAILED")
    task.refresh_from_db()
    return task


def post_action(client, action: str, tasks, url: str = CHANGELIST, **extra):
    data = {"action": action, "_selected_action": [str(t.pk) for t in tasks], "index": 0, **extra}
    return client.post(url, data)


def logged(obj) -> list[str]:
    return list(LogEntry.objects.filter(object_id=str(obj.pk)).values_list("change_message", flat=True))


# --- lists and pages -----------------------------------------------------------------------

def test_task_list_filters_search_and_hierarchy(admin_client, owner, function, django_assert_max_num_queries):
    tasks = submit(owner, function, 30)
    fail(tasks[0])
    with django_assert_max_num_queries(14):  # no per-row queries
        page = admin_client.get(CHANGELIST)
    assert page.status_code == 200 and str(tasks[-1].id) in page.content.decode()
    assert "Live dashboard" in page.content.decode()
    for query in ["?status__exact=FAILED", f"?q={tasks[0].id}", f"?function__id__exact={function.id}",
                  "?worker__id__exact=1", f"?owner__id__exact={owner.id}",
                  f"?created_at__year={tasks[0].created_at.year}"]:
        assert admin_client.get(CHANGELIST + query).status_code == 200, query
    assert admin_client.get(CHANGELIST + "?status__exact=FAILED").context["cl"].result_count == 1
    assert admin_client.get(CHANGELIST + f"?q={str(tasks[0].id)[:13]}").context["cl"].result_count == 1
    assert admin_client.get(CHANGELIST + "?q=add").context["cl"].result_count == 30
    assert admin_client.get(CHANGELIST + "?function__id__exact=nonsense").status_code in (200, 302)


def test_task_detail_shows_sizes_timings_and_traceback_without_unpickling(admin_client, owner, function, monkeypatch):
    task = fail(submit(owner, function)[0], error="ValueError: <bad>\nTraceback (most recent call last):\n  in f")

    def forbidden(*args, **kwargs):
        raise AssertionError("the web process must not unpickle user data")

    monkeypatch.setattr("dill.loads", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    page = admin_client.get(reverse("admin:functions_task_change", args=[task.id]))
    html = page.content.decode()
    assert page.status_code == 200
    assert '<pre class="faas-traceback">ValueError: &lt;bad&gt;\nTraceback (most recent call last):' in html
    assert str(task.payload_size) in html and "Sizes (bytes)" in html and "queue wait" in html.lower()
    assert 'name="_save"' not in html  # nothing to save: the dispatcher owns this state


def test_no_add_forms_and_other_lists_load(admin_client, function):
    Worker.objects.create(identity="w1", mode="push", processes=2)
    assert admin_client.get("/admin/functions/task/add/").status_code == 403
    for url in ["/admin/functions/function/", f"/admin/functions/function/{function.id}/change/",
                "/admin/functions/worker/", "/admin/functions/worker/1/change/"]:
        assert admin_client.get(url).status_code == 200, url


def test_dashboard_page_is_linked_from_the_index_and_renders_the_snapshot(admin_client, owner, function):
    task = submit(owner, function)[0]
    url = reverse("admin:functions_dashboard")
    assert url in admin_client.get("/admin/").content.decode()
    page = admin_client.get(url)
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="faas-count-QUEUED" data-status="QUEUED">1<' in html
    assert f'data-task-id="{task.id}"' in html
    assert "functions/dashboard.js" in html and "functions/chart.js" in html
    snapshot = page.context["snapshot"]
    assert snapshot["counts"]["QUEUED"] == 1 and snapshot["queue"]["waiting"] == 1
    assert json.loads(html.split('id="faas-snapshot" type="application/json">')[1].split("</script>")[0])["latest"]


def test_dashboard_page_is_for_staff_only(client, redis_client):
    User.objects.create_user("bob", password="pw")
    client.login(username="bob", password="pw")
    page = client.get(reverse("admin:functions_dashboard"))
    assert page.status_code == 302 and "/admin/login/" in page["Location"]


@pytest.mark.parametrize("path", ["functions/dashboard.js", "functions/chart.js", "functions/dashboard.css",
                                  "functions/admin.css"])
def test_static_files_are_served_with_debug_off(client, settings, path):
    assert settings.DEBUG is False
    response = client.get(f"/static/{path}")
    assert response.status_code == 200
    assert len(b"".join(response.streaming_content)) > 100


# --- actions -------------------------------------------------------------------------------

def test_cancel_a_queued_task(admin_client, owner, function):
    task, other = submit(owner, function, 2)
    response = post_action(admin_client, "cancel_tasks", [task])
    assert response.status_code == 302
    task.refresh_from_db()
    other.refresh_from_db()
    assert task.status == "FAILED" and "cancelled by an operator" in task.error
    assert other.status == "QUEUED"
    assert services.task_store().read(task.id)["status"] == b"FAILED"
    assert logged(task) == ["Cancelled."]


def test_cancel_leaves_finished_tasks_alone(admin_client, owner, function):
    task = fail(submit(owner, function)[0], error="ValueError: original")
    post_action(admin_client, "cancel_tasks", [task])
    task.refresh_from_db()
    assert task.error == "ValueError: original"
    assert logged(task) == []


def test_retry_a_failed_task_queues_a_linked_new_task(admin_client, owner, function):
    failed = fail(submit(owner, function)[0])
    queued = submit(owner, function)[0]
    r = services.task_store().redis
    before = r.xlen(keys.STREAM)
    post_action(admin_client, "retry_tasks", [failed, queued])
    retry = Task.objects.get(retry_of=failed)
    assert retry.status == "QUEUED" and retry.owner == owner and bytes(retry.payload) == bytes(failed.payload)
    assert r.xlen(keys.STREAM) == before + 1
    assert not Task.objects.filter(retry_of=queued).exists()  # only FAILED tasks are retried
    assert logged(failed) == [f"Retried as task {retry.id}."]


def test_purge_asks_first_then_fails_every_queued_task(admin_client, owner, function, monkeypatch):
    monkeypatch.setattr("functions.taskstore.store.PURGE_BATCH", 3)  # several script calls
    tasks = submit(owner, function, 8)
    running = tasks[0]
    r = services.task_store().redis
    r.hset(keys.task_key(running.id), "status", "RUNNING")
    Task.objects.filter(id=running.id).update(status="RUNNING")
    confirm = post_action(admin_client, "purge_queue", [tasks[3]])
    assert confirm.status_code == 200 and "Purge the task queue?" in confirm.content.decode()
    assert Task.objects.filter(status="QUEUED").count() == 7  # nothing happened yet
    done = admin_client.post(CHANGELIST, {"action": "purge_queue", "_selected_action": [str(tasks[3].id)],
                                          "post": "yes"})
    assert done.status_code == 302
    assert Task.objects.filter(status="FAILED", error__contains="purged from the queue").count() == 7
    assert Task.objects.get(id=running.id).status == "RUNNING"
    assert r.xlen(keys.STREAM) == 1  # only the running task's entry is left
    assert LogEntry.objects.filter(object_repr="task queue", change_message__contains="7 task(s)").exists()


def test_drain_a_worker_sets_the_flag_and_tells_the_dispatchers(admin_client, redis_client):
    alive = Worker.objects.create(identity="push-a", mode="push", processes=2)
    dead = Worker.objects.create(identity="push-b", mode="push", processes=2, alive=False)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.CONTROL_CHANNEL)
    post_action(admin_client, "drain_workers", [alive, dead], url="/admin/functions/worker/")
    alive.refresh_from_db()
    dead.refresh_from_db()
    assert alive.draining and not dead.draining
    message = wait_until(lambda: pubsub.get_message(timeout=0.1), timeout=5)  # skips the subscribe reply
    assert json.loads(message["data"]) == {"command": "drain", "identity": "push-a"}
    assert logged(alive) == ["Drain requested."]
    pubsub.close()


@pytest.mark.parametrize("action", ["cancel_tasks", "retry_tasks", "purge_queue"])
def test_actions_need_the_change_permission(client, owner, function, action):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.login(username="viewer", password="pw")
    task = submit(owner, function)[0]
    if action == "retry_tasks":
        task = fail(task)
    assert action not in client.get(CHANGELIST).content.decode()
    post_action(client, action, [task], post="yes")
    assert Task.objects.count() == 1 and Task.objects.get().status == task.status
    assert not LogEntry.objects.exists()


def test_the_change_permission_is_enough_to_cancel(client, owner, function):
    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_task", "change_task"]))
    client.login(username="operator", password="pw")
    task = submit(owner, function)[0]
    post_action(client, "cancel_tasks", [task])
    task.refresh_from_db()
    assert task.status == "FAILED"
