"""REDIS_URL takes what redis-py takes: here a TLS-only Redis (`rediss://` with the CA in the
query string), used by every part of the platform at once: the web server's enqueue and
long-poll, the Django cache, the dispatcher's stream and its dashboard channel layer."""

from __future__ import annotations

import pytest

from scripts.redis_server import RedisServer, make_tls_files
from tests import fixtures_functions as ff
from tests.platform import Api
from tests.stack import endpoint_of


@pytest.fixture
def tls_redis(tmp_path):
    server = RedisServer(tls_dir=make_tls_files(tmp_path / "tls"))
    try:
        yield server.start()
    finally:
        server.cleanup()


def test_the_whole_platform_runs_on_a_tls_only_redis(tls_redis, stack_on):
    assert tls_redis.url.startswith("rediss://")
    stack = stack_on(tls_redis.url)
    api = Api(stack.web())
    dispatcher = stack.dispatcher("push")
    stack.worker("push", 1, endpoint_of(dispatcher))
    function_id = api.register(ff.add)
    assert api.value(api.submit(function_id, 20, 22)) == 42  # long-poll: pub/sub over TLS too
    assert [api.value(t) for t in [api.submit(function_id, i, 1) for i in range(5)]] == [1, 2, 3, 4, 5]
    assert "Traceback" not in dispatcher.output(), dispatcher.output()[-3000:]
