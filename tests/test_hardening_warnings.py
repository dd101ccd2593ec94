"""Operators are told (issue 12, item 7): anonymous access and an eviction policy that can
drop the queue are WARNINGs at start-up; refused CURVE keys are WARNINGs, rate-limited."""

from __future__ import annotations

import logging
import shutil

import pytest
import redis
import zmq
import zmq.auth

from functions import startup
from scripts.redis_server import RedisServer
from tests.helpers import wait_until
from workers import security
from workers.security import DenialLog

# --- Redis eviction ---------------------------------------------------------------------------


@pytest.mark.parametrize(("maxmemory", "policy", "risky"), [
    (0, "allkeys-lru", False),  # no limit: nothing is ever evicted
    (1 << 30, "noeviction", False),
    (1 << 30, "volatile-lru", False),
    (1 << 30, "volatile-lfu", False),
    (1 << 30, "allkeys-lru", True),
    (1 << 30, "allkeys-lfu", True),
    (1 << 30, "allkeys-random", True),
    (1 << 30, "volatile-ttl", True),  # the 6 s liveness keys expire soonest: evicted first
    (1 << 30, "volatile-random", True),
])
def test_which_eviction_policies_endanger_the_queue(maxmemory, policy, risky):
    risk = startup.eviction_risk(maxmemory, policy)
    assert (risk is not None) == risky
    if risky:
        assert policy in risk and "noeviction" in risk


@pytest.fixture
def evicting_redis():
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory", "1gb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    yield server
    client.close()
    server.cleanup()


def test_a_dispatcher_warns_at_start_about_anonymous_access_and_an_evicting_redis(stack, evicting_redis):
    stack.extra_env["REDIS_URL"] = evicting_redis.url
    dispatcher = stack.dispatcher("local", "-w", "1")
    log = dispatcher.output()
    assert "WARNING functions.startup: FAAS_ALLOW_ANONYMOUS is on" in log
    assert "WARNING functions.startup: Redis evicts with maxmemory-policy allkeys-lru" in log


def test_a_dispatcher_on_a_safe_redis_without_anonymous_access_says_nothing(stack):
    stack.extra_env["FAAS_ALLOW_ANONYMOUS"] = "0"
    log = stack.dispatcher("local", "-w", "1").output()
    assert "functions.startup" not in log


@pytest.mark.parametrize("server", ["gunicorn", "daphne"])
def test_a_web_process_warns_at_start_when_anonymous_access_is_on(stack, server):
    stack.web(server)
    assert "WARNING functions.startup: FAAS_ALLOW_ANONYMOUS is on" in stack.procs[-1].output()


def test_a_web_process_without_anonymous_access_says_nothing(stack):
    stack.extra_env["FAAS_ALLOW_ANONYMOUS"] = "0"
    stack.web()
    assert "functions.startup" not in stack.procs[-1].output()


# --- ZAP denials ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_refused_key_is_reported_once_per_interval_with_the_refusals_left_out(caplog):
    clock = FakeClock()
    denials = DenialLog(interval=60.0, limit=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="workers.security"):
        assert denials.refused("KEY-A", "10.0.0.1", "Unknown key")
        for _ in range(5):
            clock.now += 1
            assert not denials.refused("KEY-A", "10.0.0.1", "Unknown key")
        assert denials.refused("KEY-B", "10.0.0.2", "Unknown key")  # another key is news
        clock.now += 60
        assert denials.refused("KEY-A", "10.0.0.1", "Unknown key")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 3
    assert "KEY-A" in messages[0] and "10.0.0.1" in messages[0]
    assert "KEY-B" in messages[1]
    assert "KEY-A" in messages[2] and "refused 5 more time(s)" in messages[2]


def test_a_flood_of_new_keys_is_capped_per_interval_and_counted():
    clock = FakeClock()
    denials = DenialLog(interval=60.0, limit=3, clock=clock)
    logged = [denials.refused(f"KEY-{i}", "", "Unknown key") for i in range(10)]
    assert logged == [True] * 3 + [False] * 7
    clock.now += 60
    assert denials.refused("KEY-X", "", "Unknown key") and denials.dropped == 0
    assert len(denials.reported) <= 12


def test_a_worker_with_a_refused_key_is_reported_at_warning_with_its_key_once(tmp_path, caplog):
    keys = tmp_path / "keys"
    security.generate_keys(keys)
    foreign = tmp_path / "foreign"
    (foreign / security.WORKERS_DIR).mkdir(parents=True)
    shutil.copy(keys / "server.key", foreign / "server.key")
    public_file, _ = zmq.auth.create_certificates(foreign / security.WORKERS_DIR, security.DEFAULT_WORKER)
    foreign_key = zmq.auth.load_certificate(public_file)[0].decode()
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    router = server_ctx.socket(zmq.ROUTER)
    dealers = []
    authenticator = None
    try:
        with caplog.at_level(logging.WARNING, logger="workers.security"):
            authenticator = security.secure_server(router, keys)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            for _ in range(3):  # the same refused worker, three times
                dealer = client_ctx.socket(zmq.DEALER)
                dealers.append(dealer)
                security.secure_client(dealer, foreign)
                dealer.connect(f"tcp://127.0.0.1:{port}")
                dealer.send(b"READY", zmq.NOBLOCK)
            wait_until(lambda: authenticator.denials.unreported.get(foreign_key, 0) == 2, timeout=10,
                       message="the three handshakes were not all refused")
        records = [r for r in caplog.records if foreign_key in r.getMessage()]
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert "127.0.0.1" in records[0].getMessage()
        assert not router.poll(0)
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
        router.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        server_ctx.term()
        client_ctx.term()
