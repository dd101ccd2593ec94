"""Idempotency keys (issue 16, item 1): a resent submit answers the first task, never a second one."""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
import redis
import requests

from functions.client import FaaSClient
from functions.models import IdempotencyKey, Task
from functions.taskstore import TaskStore, keys
from tests.fixtures_functions import add
from tests.fixtures_standout import append_line
from tests.platform import start_platform
from workers.serialization import serialize


def register(client) -> str:
    response = client.post("/register_function", {"name": "add", "payload": serialize(add)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["function_id"]


def execute(client, function_id, *args, key=None, header=None, **extra):
    body = {"function_id": function_id, "payload": serialize((args, {})), **extra}
    if key is not None:
        body["idempotency_key"] = key
    headers = {"HTTP_IDEMPOTENCY_KEY": header} if header else {}
    return client.post("/execute_function", body, format="json", **headers)


@pytest.mark.django_db
def test_same_key_answers_the_same_task_and_queues_nothing_more(alice, redis_client):
    function_id = register(alice)
    first = execute(alice, function_id, 1, 2, header="order-17")
    again = execute(alice, function_id, 1, 2, header="order-17")
    by_field = execute(alice, function_id, 1, 2, key="order-17")
    assert first.status_code == again.status_code == by_field.status_code == 201
    assert first.json()["task_id"] == again.json()["task_id"] == by_field.json()["task_id"]
    assert Task.objects.count() == 1
    assert redis_client.xlen(keys.STREAM) == 1
    other = execute(alice, function_id, 1, 2, header="order-18")
    assert other.json()["task_id"] != first.json()["task_id"]


@pytest.mark.django_db
def test_same_key_with_another_call_is_a_409_with_a_sentence(alice):
    function_id = register(alice)
    assert execute(alice, function_id, 1, 2, key="k").status_code == 201
    for changed in (execute(alice, function_id, 1, 3, key="k"),
                    execute(alice, function_id, 1, 2, key="k", timeout=5)):
        assert changed.status_code == 409
        assert "already used for a different call" in changed.json()["detail"]
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_keys_belong_to_one_user(alice, bob):
    mine = execute(alice, register(alice), 1, 2, key="shared-name").json()["task_id"]
    theirs = execute(bob, register(bob), 1, 2, key="shared-name")
    assert theirs.status_code == 201 and theirs.json()["task_id"] != mine


@pytest.mark.django_db
def test_a_key_expires_after_the_ttl(alice, settings, redis_client):
    settings.FAAS_IDEMPOTENCY_TTL = 3600
    function_id = register(alice)
    first = execute(alice, function_id, 1, 2, key="daily").json()["task_id"]
    assert redis_client.ttl(redis_client.keys("faas:idem:*")[0]) > 3500  # Redis expires it after the TTL
    two_hours_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)  # as if it were now
    IdempotencyKey.objects.update(created_at=two_hours_ago)  # two hours on: the row is old,
    redis_client.set("faas:idem-epoch", repr(two_hours_ago.timestamp() - 60))  # Redis was up all along,
    redis_client.delete(*redis_client.keys("faas:idem:*"))  # and has expired the key
    later = execute(alice, function_id, 1, 3, key="daily")  # a new call under the old key is fine now
    assert later.status_code == 201 and later.json()["task_id"] != first


@pytest.mark.django_db
def test_a_key_redis_forgot_is_still_answered_from_the_database(alice, redis_client):
    function_id = register(alice)
    first = execute(alice, function_id, 1, 2, key="durable").json()["task_id"]
    redis_client.delete("faas:idem-epoch", *redis_client.keys("faas:idem:*"))  # a restart without its data
    assert execute(alice, function_id, 1, 2, key="durable").json()["task_id"] == first
    assert execute(alice, function_id, 1, 3, key="durable").status_code == 409
    assert Task.objects.count() == 1 and redis_client.keys("faas:idem:*")  # and Redis was told again


@pytest.mark.django_db
def test_a_submit_that_failed_leaves_the_key_free_for_the_retry(alice, redis_client):
    function_id = register(alice)
    with mock.patch.object(TaskStore, "enqueue", side_effect=redis.ConnectionError("down")):
        assert execute(alice, function_id, 1, 2, key="retry-me").status_code == 503
    assert not IdempotencyKey.objects.exists() and not redis_client.keys("faas:idem:*")
    retried = execute(alice, function_id, 1, 2, key="retry-me")
    assert retried.status_code == 201 and Task.objects.filter(id=retried.json()["task_id"]).exists()


@pytest.mark.django_db
def test_bad_keys_are_400(alice):
    function_id = register(alice)
    assert execute(alice, function_id, 1, 2, key="x" * 256).status_code == 400
    mismatch = execute(alice, function_id, 1, 2, key="a", header="b")
    assert mismatch.status_code == 400 and "differ" in str(mismatch.json())


@pytest.mark.django_db
def test_batch_keys_per_call_replay_and_extend(alice):
    function_id = register(alice)
    payloads = [serialize(((i, i), {})) for i in range(3)]
    first = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads,
                                          "idempotency_keys": ["a", "b", "c"]}, format="json")
    assert first.status_code == 201
    extra = serialize(((9, 9), {}))
    again = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads + [extra],
                                          "idempotency_keys": ["a", "b", "c", "d"]}, format="json")
    assert again.json()["task_ids"][:3] == first.json()["task_ids"]
    assert Task.objects.count() == 4
    header = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads}, format="json",
                        HTTP_IDEMPOTENCY_KEY="nightly")
    resent = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads}, format="json",
                        HTTP_IDEMPOTENCY_KEY="nightly")
    assert header.json()["task_ids"] == resent.json()["task_ids"] and Task.objects.count() == 7
    wrong = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads,
                                          "idempotency_keys": ["a"]}, format="json")
    assert wrong.status_code == 400 and "one key per payload" in str(wrong.json())
    duplicate = alice.post("/execute_batch", {"function_id": function_id, "payloads": payloads[:2],
                                              "idempotency_keys": ["z", "z"]}, format="json")
    assert duplicate.status_code == 409 and Task.objects.count() == 7


def test_racing_requests_with_one_key_queue_one_task(stack, redis_client):
    """Many clients resend one submit at the same moment to a real multi-process server:
    every answer names the same task, one row and one queue entry exist, and it runs once."""
    platform = start_platform(stack, "local", 2)
    function_id = platform.api.register(add)
    body = {"function_id": function_id, "payload": serialize(((20, 22), {}))}

    def post(i):
        with requests.Session() as http:
            return http.post(platform.api.url + "/execute_function", json=body,
                             headers={"Idempotency-Key": "race-1"}, timeout=30)

    for _ in range(3):  # several rounds: a race that is lost only sometimes still shows
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(16)))
        assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
        ids = {a.json()["task_id"] for a in answers}
        assert len(ids) == 1
    assert Task.objects.count() == 1
    assert redis_client.xlen(keys.STREAM) <= 1  # acknowledged entries may be trimmed; never two
    assert platform.api.value(ids.pop()) == 42

    def post_batch(i):
        with requests.Session() as http:
            return http.post(platform.api.url + "/execute_batch", timeout=30, headers={"Idempotency-Key": "b"},
                             json={"function_id": function_id, "payloads": [serialize(((i, 0), {}))
                                                                            for i in range(5)]})

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(post_batch, range(8)))
    assert {a.status_code for a in batches} == {201}, [a.text for a in batches]
    assert len({tuple(a.json()["task_ids"]) for a in batches}) == 1
    assert Task.objects.count() == 6


class AnswerDroppingProxy:
    """A TCP proxy on 127.0.0.1 that forwards everything but, `drops` times, swallows the
    server's answer to a POST /execute_function and cuts the connection: the network
    failure after which a client cannot know whether its submit was queued."""

    def __init__(self, target_port: int, drops: int = 1):
        self.target_port, self.drops, self.submits = target_port, drops, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"drop": False}
            threading.Thread(target=self._requests, args=(downstream, upstream, state), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, downstream, state), daemon=True).start()

    def _requests(self, src, dst, state):
        while data := self._recv(src):
            if b"POST /execute_function" in data:
                with self.lock:
                    self.submits += 1
                    if self.drops:
                        self.drops -= 1
                        state["drop"] = True
            dst.sendall(data)
        dst.close()

    def _answers(self, src, dst, state):
        while data := self._recv(src):
            if state["drop"]:  # the server answered; the client never hears it
                break
            dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _recv(sock) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self):
        self.listener.close()


def test_client_resends_a_submit_whose_answer_was_lost_and_it_runs_once(stack, tmp_path):
    platform = start_platform(stack, "local", 1)
    proxy = AnswerDroppingProxy(int(platform.api.url.rsplit(":", 1)[1]))
    try:
        client = FaaSClient(f"http://127.0.0.1:{proxy.port}", timeout=10)
        function_id = client.register(append_line, by_value=False)
        marker = tmp_path / "ran.txt"
        task_id = client.submit(function_id, str(marker))
        assert client.result(task_id, timeout=30) == 1
    finally:
        proxy.close()
    assert proxy.submits == 2  # the lost answer and the resend
    assert Task.objects.count() == 1
    assert marker.read_text() == "ran\n"  # one line per run
