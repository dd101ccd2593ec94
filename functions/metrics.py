"""GET /metrics: the platform's figures in the Prometheus text format.

Counters and histograms are read from the Redis hash every process adds to
(functions.taskstore.metrics explains why Redis and not per-process files); gauges are read at
scrape time from where they live: queue depth and running tasks from the stream, workers
from the database rows the dispatchers keep, loop lag from each dispatcher's report.
Allowed to staff signed in to the admin, or to a scraper sending
`Authorization: Bearer <FAAS_METRICS_TOKEN>`.
"""

from __future__ import annotations

import hmac
import math
from collections import defaultdict

from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from functions import services
from functions.models import Worker
from functions.taskstore import metrics as metricstore

PREFIX = "faas_"
HELP = {
    metricstore.SUBMITTED: "Tasks accepted by the API.",
    metricstore.FINISHED: "Tasks that reached a final state, by status.",
    metricstore.RETRIES: "Lost tasks queued again for another attempt.",
    metricstore.DEADLINE_KILLS: "Tasks failed for running past their deadline.",
    metricstore.QUEUE_WAIT: "Seconds from submit (or re-queue) until a dispatcher took the task.",
    metricstore.RUN_TIME: "Seconds a task's function ran, on the worker's clock.",
}
COUNTERS = (metricstore.SUBMITTED, metricstore.FINISHED, metricstore.RETRIES, metricstore.DEADLINE_KILLS)
HISTOGRAMS = (metricstore.QUEUE_WAIT, metricstore.RUN_TIME)


def allowed(request) -> bool:
    token = settings.FAAS_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    return bool(request.user and request.user.is_active and request.user.is_staff)


class PlatformCollector:
    """Builds every family from Redis and the database at each scrape (nothing cached)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        values = self.store.metrics()
        yield from self._counters(values)
        yield from self._histograms(values)
        yield from self._gauges()

    def _counters(self, values: dict[str, float]):
        for name in COUNTERS:
            family = CounterMetricFamily(PREFIX + name.removesuffix("_total"), HELP[name],
                                         labels=_label_names(name))
            for raw, value in values.items():
                metric, labels = metricstore.parse_field(raw)
                if metric == name:
                    family.add_metric([labels.get(k, "") for k in _label_names(name)], value)
            if name in (metricstore.RETRIES, metricstore.DEADLINE_KILLS) and not family.samples:
                family.add_metric([], 0)
            yield family

    def _histograms(self, values: dict[str, float]):
        for name in HISTOGRAMS:
            per_bucket = defaultdict(float)
            for raw, value in values.items():
                metric, labels = metricstore.parse_field(raw)
                if metric == name + "_bucket":
                    per_bucket[labels["le"]] += value
            running, buckets = 0.0, []
            for bound in metricstore.BUCKETS[name]:
                le = "+Inf" if bound == math.inf else repr(bound)
                running += per_bucket.get(le, 0.0)
                buckets.append((le, running))
            family = HistogramMetricFamily(PREFIX + name, HELP[name])
            family.add_metric([], buckets, values.get(name + "_sum", 0.0))
            yield family

    def _gauges(self):
        depth = self.store.queue_depth()
        yield GaugeMetricFamily(PREFIX + "queue_depth", "Tasks waiting in the queue, not yet taken by a dispatcher.",
                                value=depth.waiting)
        yield GaugeMetricFamily(PREFIX + "tasks_running", "Tasks taken by a dispatcher and not finished.",
                                value=depth.pending)
        yield GaugeMetricFamily(PREFIX + "dispatchers_alive", "Dispatchers whose liveness key is fresh.",
                                value=len(self.store.live_dispatcher_names()))
        lag = GaugeMetricFamily(PREFIX + "dispatcher_loop_lag_seconds",
                                "Longest stretch a dispatcher's loop worked between two waits, last 2 s.",
                                labels=["dispatcher"])
        for consumer, value in sorted(self.store.metric_lags().items()):
            lag.add_metric([consumer], value)
        yield lag
        workers = Worker.objects.filter(alive=True).aggregate(n=Count("id"), processes=Sum("processes"),
                                                              busy=Sum("busy"))
        yield GaugeMetricFamily(PREFIX + "workers_alive", "Workers (or local pools) alive.", value=workers["n"])
        yield GaugeMetricFamily(PREFIX + "worker_processes", "Processes of the live workers.",
                                value=workers["processes"] or 0)
        yield GaugeMetricFamily(PREFIX + "worker_processes_busy", "Processes of the live workers running a task.",
                                value=workers["busy"] or 0)


def _label_names(name: str) -> list[str]:
    return {metricstore.SUBMITTED: ["function"], metricstore.FINISHED: ["status", "function"]}.get(name, [])


@require_GET
def metrics(request):
    if not allowed(request):
        return JsonResponse({"detail": "Metrics are for staff, or for a scraper sending "
                                       "'Authorization: Bearer <FAAS_METRICS_TOKEN>'."}, status=403)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(services.task_store()))
    return HttpResponse(generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")
