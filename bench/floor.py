"""The floor on this machine: the cheapest round trips the platform is built from, measured
in the same run as everything else (a Redis PING, a ZeroMQ REQ/REP between two processes,
and empty requests to the same web servers with the same HTTP clients)."""

from __future__ import annotations

import multiprocessing
import time

import zmq

from bench import stats
from bench.httpclient import Connection
from functions.taskstore import TaskStore
from functions.transport import Transport
from scripts.redis_server import free_port

WARMUP = 20  # round trips before timing starts


def timed(call, samples: int) -> dict:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return stats.summary(times, 1000.0)


def redis_ping(url: str, samples: int) -> dict:
    store = TaskStore.connect(url)
    try:
        return timed(store.ping, samples)
    finally:
        store.close()


def _echo(port: int, count: int) -> None:
    """The REP side, in its own process: answer `count` requests, then exit."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 30_000)  # never outlive a parent that went away
    socket.bind(f"tcp://127.0.0.1:{port}")
    try:
        for _ in range(count):
            socket.send(socket.recv())
    except zmq.Again:
        pass
    finally:
        socket.close()
        context.term()


def zmq_round_trip(samples: int) -> dict:
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(target=_echo, args=(port, samples + WARMUP), daemon=True)
    child.start()
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 30_000)
    socket.connect(f"tcp://127.0.0.1:{port}")

    def ping():
        socket.send(b"x" * 64)
        socket.recv()

    try:
        return timed(ping, samples)
    finally:
        socket.close()
        context.term()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)


def http_empty(url: str, path: str, samples: int) -> dict:
    """GET `path` over one keep-alive connection of the load generators' client."""
    conn = Connection(url)
    try:
        return timed(lambda: conn.request("GET", path), samples)
    finally:
        conn.close()


def http_empty_sdk(url: str, path: str, samples: int) -> dict:
    """The same request through the SDK's own HTTP layer (functions.transport)."""
    transport = Transport(url, {}, connections=1)
    try:
        return timed(lambda: transport.request("GET", path, timeout=10), samples)
    finally:
        transport.close()


def measure(redis_url: str, urls: dict[str, str], samples: int) -> dict:
    figures = {"redis_ping_ms": redis_ping(redis_url, samples), "zmq_reqrep_ms": zmq_round_trip(samples)}
    for server, url in urls.items():
        figures[f"{server}_status_404_ms"] = http_empty(url, "/status/not-a-task-id", samples)
        figures[f"{server}_django_404_ms"] = http_empty(url, "/no-such-path", samples)
    figures["gunicorn_status_404_sdk_ms"] = http_empty_sdk(urls["gunicorn"], "/status/not-a-task-id", samples)
    return figures
