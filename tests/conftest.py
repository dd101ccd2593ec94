"""Test fixtures: a real redis-server on a free port for the session, flushed around each test."""

from __future__ import annotations

import pytest
from django.test import override_settings

from scripts.redis_server import RedisServer


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """A test database file of this session's own, which the processes it starts share
    (and which concurrent test sessions never clobber)."""
    from django.conf import settings

    default = settings.DATABASES["default"]
    if default["ENGINE"] == "django.db.backends.sqlite3":
        default.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session", autouse=True)
def _redis_settings(redis_server):
    """Point every Redis user (mirror, cache, channel layer) at the test server."""
    url = redis_server.url
    with override_settings(
        REDIS_URL=url,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                            "KEY_PREFIX": "faas:cache"}},
        CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                    "CONFIG": {"hosts": [{"address": url, "socket_timeout": 30}],  # see settings
                                               "prefix": "faas:channels:"}}},
    ):
        yield


@pytest.fixture
def redis_client(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def stack(redis_server, redis_client, transactional_db, tmp_path, request):
    """Real processes (web server, dispatcher, workers) sharing the test database and Redis."""
    from django.conf import settings as django_settings

    from scripts.stack import Stack

    started = Stack(redis_url=redis_server.url, database_url=database_url(django_settings.DATABASES["default"]),
                    workdir=tmp_path)
    yield started
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(started.logs())
    started.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can print logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def database_url(db: dict) -> str:
    """The test database as a DATABASE_URL for the processes a test starts."""
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
