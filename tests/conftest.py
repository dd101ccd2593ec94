"""Test fixtures: a real redis-server on a free port for the session, flushed around each test;
with `--postgres`, a throwaway PostgreSQL cluster as the database instead of SQLite."""

from __future__ import annotations

import pytest
from django.test import override_settings

from scripts.redis_server import RedisServer

SQLITE = "django.db.backends.sqlite3"


def pytest_addoption(parser):
    parser.addoption("--postgres", action="store_true",
                     help="run against a throwaway PostgreSQL cluster this session starts, not SQLite")


@pytest.fixture(scope="session")
def postgres_server(request):
    """A PostgreSQL cluster of this session's own (own port, own socket directory), always removed."""
    from scripts.postgres_server import PostgresServer

    server = PostgresServer()
    request.addfinalizer(server.cleanup)  # before start: a half-started cluster is removed too
    return server.start()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, tmp_path_factory):
    """A test database of this session's own, which the processes it starts share (and which
    concurrent test sessions never clobber): a SQLite file, or with --postgres a database in
    a cluster started for the session."""
    from django.conf import settings
    from django.db import connections

    default = settings.DATABASES["default"]
    if request.config.getoption("--postgres"):
        import dj_database_url

        server = request.getfixturevalue("postgres_server")
        # In place: Django's connection handler holds this very dict; the SQLite wrapper made
        # at start-up (never connected) is dropped so the next use builds a PostgreSQL one.
        parsed = dj_database_url.parse(server.url, conn_max_age=600)
        default.update(parsed, OPTIONS=parsed.get("OPTIONS", {}),
                       TEST={"CHARSET": None, "COLLATION": None, "MIGRATE": True, "MIRROR": None, "NAME": None})
        try:
            del connections["default"]
        except AttributeError:  # no wrapper made yet
            pass
    elif default["ENGINE"] == SQLITE:
        default.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


def pytest_configure(config):
    config.addinivalue_line("markers", "only_on(engine, why): run only on that database ('sqlite' or 'postgres'), "
                                       "saying why it makes no sense on the other")


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked for the other database, with the reason their marker gives."""
    engine = "postgres" if config.getoption("--postgres") else "sqlite"
    for item in items:
        marker = item.get_closest_marker("only_on")
        if marker is not None and marker.args[0] != engine:
            why = marker.kwargs.get("why") or marker.args[1]
            item.add_marker(pytest.mark.skip(reason=f"{marker.args[0]} only: {why}"))


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


@pytest.fixture
def stack_on(transactional_db, tmp_path, request):
    """`stack_on(redis_url)`: like `stack`, against a Redis of the test's own (TLS, another
    network); every stack it made is stopped at the end, its logs printed on failure."""
    from django.conf import settings as django_settings

    from scripts.stack import Stack

    made = []

    def make(redis_url: str) -> Stack:
        made.append(Stack(redis_url=redis_url, database_url=database_url(django_settings.DATABASES["default"]),
                          workdir=tmp_path))
        return made[-1]

    yield make
    failed = getattr(request.node, "rep_call", None)
    for started in made:
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


@pytest.fixture
def alice(redis_client):
    """An API client signed in as a user of its own (most API tests need two users)."""
    from django.contrib.auth.models import User

    from tests.helpers import client_for

    return client_for(User.objects.create_user("alice", password="pw"))


@pytest.fixture
def bob(redis_client):
    from django.contrib.auth.models import User

    from tests.helpers import client_for

    return client_for(User.objects.create_user("bob", password="pw"))
