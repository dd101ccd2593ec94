"""The SDK's HTTP layer against small fake servers: what a network failure looks like to the
caller, what is retried (never a POST), and proxies taken from the environment."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from functions.client import RESEND_DELAYS, APIError, ClientError, FaaSClient, TransportError
from scripts.redis_server import free_port

TASK_ID = "7e7b0c07-3695-44ca-8ae3-1096cf678685"


class FakeServer:
    """Accepts connections on 127.0.0.1 and answers each request with `reply(request_line)`:
    bytes to send, or None to close the connection without answering, or "hang"."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        answer = self.reply(line)
        if answer == "hang":
            return
        if answer is not None:
            conn.sendall(answer)
        conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


@pytest.fixture
def fake():
    servers = []

    def make(reply):
        server = FakeServer(reply)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_refused_connection_is_a_transport_error():
    client = FaaSClient(f"http://127.0.0.1:{free_port()}", token="")
    began = time.monotonic()
    with pytest.raises(TransportError) as caught:
        client.status(TASK_ID)
    assert time.monotonic() - began < 10
    assert isinstance(caught.value, ClientError) and isinstance(caught.value, ConnectionError)
    assert "/status/" in str(caught.value)


def test_a_server_that_never_answers_times_out_once_without_a_second_try(fake):
    server = fake(lambda line: "hang")
    client = FaaSClient(server.url, token="", timeout=0.5)
    began = time.monotonic()
    with pytest.raises(TransportError, match="[Tt]imed? ?out"):
        client.status(TASK_ID)
    assert time.monotonic() - began < 5
    assert len(server.requests) == 1


def test_a_get_whose_connection_broke_is_asked_again(fake):
    answers = iter([None, http_response(200, b'{"task_id": "%s", "status": "QUEUED"}' % TASK_ID.encode())])
    server = fake(lambda line: next(answers))
    assert FaaSClient(server.url, token="").status(TASK_ID) == "QUEUED"
    assert len(server.requests) == 2


def test_a_submit_whose_connection_broke_is_resent_a_few_times_then_fails(fake):
    """Safe because every submit carries an idempotency key (tests/test_standout_idempotency.py
    proves the server queues it once); a POST without one is never resent by the transport."""
    server = fake(lambda line: None)
    with pytest.raises(TransportError):
        FaaSClient(server.url, token="").submit(TASK_ID, 1)
    assert server.requests == ["POST /execute_function HTTP/1.1"] * (1 + len(RESEND_DELAYS))


def test_an_error_page_that_is_not_json_is_an_api_error_with_its_text(fake):
    server = fake(lambda line: http_response(502, b"Bad Gateway from the proxy", "text/plain"))
    with pytest.raises(APIError) as caught:
        FaaSClient(server.url, token="").status(TASK_ID)
    assert caught.value.status_code == 502
    assert caught.value.detail == "Bad Gateway from the proxy"


def test_the_proxy_comes_from_the_environment_and_no_proxy_is_honoured(fake, monkeypatch):
    proxy = fake(lambda line: http_response(200, b'{"task_id": "%s", "status": "RUNNING"}' % TASK_ID.encode()))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert FaaSClient("http://faas.example:8000", token="").status(TASK_ID) == "RUNNING"
    assert proxy.requests == [f"GET http://faas.example:8000/status/{TASK_ID} HTTP/1.1"]

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = fake(lambda line: http_response(200, b'{"task_id": "%s", "status": "QUEUED"}' % TASK_ID.encode()))
    assert FaaSClient(direct.url, token="").status(TASK_ID) == "QUEUED"
    assert direct.requests == [f"GET /status/{TASK_ID} HTTP/1.1"]
    assert len(proxy.requests) == 1
