"""The dashboard websocket: who may connect, what they receive, and that dispatcher events arrive.

Uses the real channels-redis layer on the test Redis (conftest points CHANNEL_LAYERS there).
"""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

from functions import consumers, services
from functions.consumers import DashboardConsumer
from functions.dashboard import DashboardPublisher
from functions.models import Worker
from tests import fixtures_functions as ff
from workers import serialization

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def staff():
    return User.objects.create_user("operator", password="pw", is_staff=True)


@pytest.fixture
def queued_task(redis_client, staff):
    function = services.function_register(owner=staff, name="add", payload=serialization.dumps(ff.add))
    task = services.task_submit(owner=staff, function=function, payload=serialization.dumps(((1, 2), {})))
    Worker.objects.create(identity="push-host-1", mode="push", hostname="host", pid=42, processes=4, busy=1)
    return task


def communicator_for(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/")
    communicator.scope["user"] = user
    return communicator


async def test_staff_receive_a_snapshot_on_connect(queued_task, staff):
    communicator = communicator_for(staff)
    connected, _ = await communicator.connect()
    assert connected
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert snapshot["counts"] == {"QUEUED": 1, "RUNNING": 0, "COMPLETED": 0, "FAILED": 0}
    assert snapshot["queue"] == {"waiting": 1, "in_flight": 0, "length": 1}
    assert [t["id"] for t in snapshot["latest"]] == [str(queued_task.id)]
    assert snapshot["latest"][0]["function"] == "add"
    assert len(snapshot["throughput"]["counts"]) == 300
    assert [(w["identity"], w["processes"], w["busy"], w["alive"]) for w in snapshot["workers"]] == [
        ("push-host-1", 4, 1, True)]
    await communicator.disconnect()


@pytest.mark.parametrize("make_user", [
    lambda: AnonymousUser(),
    lambda: User.objects.create_user("someone", password="pw"),
    lambda: User.objects.create_user("retired", password="pw", is_staff=True, is_active=False),
], ids=["anonymous", "not-staff", "inactive-staff"])
async def test_everyone_else_is_refused(make_user, redis_client):
    from channels.db import database_sync_to_async

    user = await database_sync_to_async(make_user)()
    communicator = communicator_for(user)
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.wait()


async def test_a_dispatcher_event_reaches_the_socket(queued_task, staff):
    communicator = communicator_for(staff)
    assert (await communicator.connect())[0]
    await communicator.receive_json_from(timeout=5)  # the snapshot
    publisher = DashboardPublisher()  # the real layer, as the dispatcher uses it
    publisher.task(str(queued_task.id), "RUNNING")
    publisher.worker("push-host-1", busy=2)
    assert publisher.flush(now=0.0)  # hands the event to the sender thread and returns
    update = await communicator.receive_json_from(timeout=5)
    assert update["type"] == "dashboard.update"
    assert update["tasks"] == {str(queued_task.id): "RUNNING"}
    assert update["workers"] == {"push-host-1": {"busy": 2}}
    assert update["summary"]["counts"]["QUEUED"] == 1
    assert update["summary"]["latest"][0]["id"] == str(queued_task.id)
    await communicator.disconnect()


async def test_a_quiet_page_may_ask_for_a_fresh_snapshot(queued_task, staff, monkeypatch):
    monkeypatch.setattr(consumers, "SNAPSHOT_MIN_INTERVAL", 0.0)
    communicator = communicator_for(staff)
    assert (await communicator.connect())[0]
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"type": "snapshot"})
    again = await communicator.receive_json_from(timeout=5)
    assert again["type"] == "snapshot" and again["counts"]["QUEUED"] == 1
    await communicator.disconnect()


async def full_stack(session_key: str | None, origin: bytes) -> WebsocketCommunicator:
    """Through faas_site.asgi: origin validation, then the session cookie, then the consumer."""
    from faas_site.asgi import application

    headers = [(b"origin", origin), (b"host", b"testserver")]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    return WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)


async def login(user) -> str:
    from channels.db import database_sync_to_async

    def make_session():
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return await database_sync_to_async(make_session)()


async def test_the_asgi_app_admits_a_logged_in_staff_session(staff, redis_client):
    communicator = await full_stack(await login(staff), b"http://testserver")
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    await communicator.disconnect()


@pytest.mark.parametrize("with_session, origin", [(False, b"http://testserver"), (True, b"http://evil.example")],
                         ids=["no-session", "foreign-origin"])
async def test_the_asgi_app_refuses_no_session_and_foreign_origins(staff, redis_client, with_session, origin):
    communicator = await full_stack(await login(staff) if with_session else None, origin)
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


async def test_an_idle_socket_outlives_the_channel_layers_blocking_read(queued_task, staff):
    """redis-py 8 times out socket reads after 5 s by default, exactly as long as channels-redis
    blocks in BZPOPMIN: without an explicit socket_timeout every quiet consumer crashed after
    ~5 s (django/channels_redis#422). Stay silent past that, then check the socket still works."""
    import asyncio

    communicator = communicator_for(staff)
    assert (await communicator.connect())[0]
    await communicator.receive_json_from(timeout=5)
    await asyncio.sleep(6.5)
    publisher = DashboardPublisher()
    publisher.task(str(queued_task.id), "RUNNING")
    publisher.flush(now=0.0)
    assert (await communicator.receive_json_from(timeout=5))["type"] == "dashboard.update"
    await communicator.disconnect()
