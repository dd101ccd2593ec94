"""GET /metrics: Prometheus text with the platform's counters, histograms and gauges,
summed across web processes and dispatchers through Redis, and protected."""

from __future__ import annotations

import os
import signal

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dispatch.metrics import DispatcherMetrics
from functions.taskstore import TaskStore
from functions.taskstore import metrics as metricstore
from functions.taskstore.memory import MemoryTaskStore
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api
from tests.stack import endpoint_of
from workers.protocol import Result

pytestmark = pytest.mark.django_db
TOKEN = "scrape-me"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    response = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_happened_in_the_dispatcher_and_the_web(stack):
    stack.extra_env["FAAS_METRICS_TOKEN"] = TOKEN
    url = stack.web()
    stack.dispatcher("local", "-w", "2")
    api = Api(url)
    fid = api.register(ff.add)
    for i in range(3):
        assert api.value(api.submit(fid, i, 1)) == i + 1
    failing = api.register(ff.raise_value_error)
    api.failure(api.submit(failing))
    sleeper = api.register(ff.sleep_then)
    assert "timed out" in str(api.failure(api.submit(sleeper, 30, timeout=0.5)))

    def flushed():  # the dispatcher adds its counts to Redis every 2 s
        samples = scrape(url)
        return samples if value(samples, "faas_task_deadline_kills_total") == 1 else None

    samples = wait_until(flushed, timeout=15, message="deadline kill never counted")
    assert value(samples, "faas_tasks_submitted_total", function=fid) == 3
    assert value(samples, "faas_tasks_finished_total", function=fid, status="COMPLETED") == 3
    assert value(samples, "faas_tasks_finished_total", function=failing, status="FAILED") == 1
    assert value(samples, "faas_tasks_finished_total", function=sleeper, status="FAILED") == 1
    assert value(samples, "faas_task_run_seconds_count") == 5  # the killed one ran until its kill
    assert value(samples, "faas_task_run_seconds_bucket", le="+Inf") == 5
    assert value(samples, "faas_task_run_seconds_bucket", le="0.1") == 4
    assert value(samples, "faas_task_queue_wait_seconds_count") == 5
    assert 0 < value(samples, "faas_task_queue_wait_seconds_sum") < 30
    assert value(samples, "faas_task_retries_total") == 0
    assert value(samples, "faas_queue_depth") == 0 and value(samples, "faas_tasks_running") == 0
    assert value(samples, "faas_dispatchers_alive") == 1
    assert value(samples, "faas_workers_alive") == 1 and value(samples, "faas_worker_processes") == 2
    lags = [v for (name, _), v in samples.items() if name == "faas_dispatcher_loop_lag_seconds"]
    assert len(lags) == 1 and 0 <= lags[0] < 5


def test_metrics_count_retries_of_tasks_whose_worker_died(stack):
    stack.extra_env["FAAS_METRICS_TOKEN"] = TOKEN
    url = stack.web()
    dispatcher = stack.dispatcher("push", "-w", "1", "--retries", "1")
    worker = stack.worker("push", 1, endpoint_of(dispatcher))
    api = Api(url)
    task_id = api.submit(api.register(ff.sleep_then), 1000)
    wait_until(lambda: api.status(task_id) == "RUNNING", timeout=30)
    os.killpg(worker.pid, signal.SIGKILL)
    wait_until(lambda: value(scrape(url), "faas_task_retries_total") == 1, timeout=30,
               message="the lost task's retry was not counted")
    assert value(scrape(url), "faas_queue_depth") == 1  # waiting for a worker again


def test_metrics_refused_without_staff_session_or_token(stack, django_user_model):
    stack.extra_env["FAAS_METRICS_TOKEN"] = TOKEN
    url = stack.web()
    assert requests.get(url + "/metrics", timeout=5).status_code == 403
    wrong = requests.get(url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 403 and "FAAS_METRICS_TOKEN" in wrong.json()["detail"]
    django_user_model.objects.create_superuser("ops", password="pw")
    session = requests.Session()
    login = url + "/admin/login/"
    session.get(login, timeout=5)
    session.post(login, data={"username": "ops", "password": "pw", "next": "/admin/",
                              "csrfmiddlewaretoken": session.cookies["csrftoken"]}, timeout=5)
    assert session.get(url + "/metrics", timeout=5).status_code == 200


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_dispatcher_metrics_with_a_fake_clock(redis_client, redis_server, kind):
    now = [100.0]
    store = TaskStore.connect(redis_server.url) if kind == "redis" else MemoryTaskStore(clock=lambda: now[0])
    recorder = DispatcherMetrics("d1", clock=lambda: now[0])
    recorder.wait_ends()
    now[0] += 0.25  # the loop worked 250 ms before waiting again
    recorder.wait_begins()
    recorder.wait_ends()
    now[0] += 0.05
    recorder.wait_begins()
    recorder.claimed(b"1000000-0", dispatched_at=1000.5)
    recorder.finished(Result("t", "FAILED", b"", "WorkerFailureException: timed out after 2 s", 10.0, 12.0), "f")
    recorder.finished(Result("u", "COMPLETED", b"", "", 10.0, 10.002), "f")
    recorder.flush(store)
    stored = store.metrics()
    assert store.metric_lags() == {"d1": 0.25}
    assert stored[metricstore.DEADLINE_KILLS] == 1
    assert stored[metricstore.field(metricstore.FINISHED, status="FAILED", function="f")] == 1
    assert stored[metricstore.field(metricstore.QUEUE_WAIT + "_bucket", le="0.5")] == 1
    assert stored[metricstore.field(metricstore.RUN_TIME + "_bucket", le="5.0")] == 1
    assert stored[metricstore.field(metricstore.RUN_TIME + "_bucket", le="0.005")] == 1
    assert stored[metricstore.RUN_TIME + "_sum"] == pytest.approx(2.002)
    recorder.flush(store)  # nothing new: nothing added twice
    assert store.metrics() == stored
