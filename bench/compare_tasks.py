"""The Celery app and task the comparison runs (RQ runs bench.tasks.noop, the platform's own no-op).

The broker and the result backend are both the Redis given in BENCH_COMPARE_REDIS_URL: the
comparison starts a fresh redis-server per competitor and passes its URL to the workers and
to the client through that variable. Everything else is Celery's defaults.
"""

import os
import time

from celery import Celery

REDIS_URL_ENV = "BENCH_COMPARE_REDIS_URL"

app = Celery("bench_compare", broker=os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0"),
             backend=os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0"))
# Only to silence Celery 5's start-up deprecation warning; the behaviour is its default (retry).
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")
def noop():
    """The empty task, as bench.tasks.noop."""
    return None


@app.task(name="bench.noop_with")
def noop_with(value):
    """The empty task with one argument, as bench.tasks.noop_with."""
    return None


@app.task(name="bench.pause")
def pause(seconds):
    """As bench.tasks.pause."""
    time.sleep(seconds)
