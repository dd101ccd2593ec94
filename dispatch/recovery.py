"""How a dispatcher recovers: from a Redis outage, and from the death of another
dispatcher (its liveness key expires and its stream entries are taken over)."""

from __future__ import annotations

import datetime
import logging

import redis
from django.utils import timezone

from dispatch.state import InFlight
from functions import mirror, services
from workers.protocol import TaskStatus

log = logging.getLogger(__name__)

RECLAIM_INTERVAL = 2.0  # seconds between checks for entries held by dead dispatchers
REQUEUE_PAGE = 500  # QUEUED rows checked against Redis per round trip when re-queueing lost tasks


class Recovery:
    """Mixed into Dispatcher; uses its redis client, in_flight, start() and lose()."""

    def wait_for_redis(self, error: Exception) -> None:
        """Redis went away: keep the workers' results, retry with back-off, then pick up
        where we were (new subscription, our own unacknowledged entries, unsaved results)."""
        log.warning("lost Redis (%s); retrying", error)
        backoff = 0.1
        while not self.stopped:
            if self.stopping and not self.in_flight:  # draining with nothing held: just go
                self.stopped = True
                return
            try:
                self.redis.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError):
                self.serve_workers_without_redis(backoff)
                backoff = min(backoff * 2, 2.0)
        if self.stopped:
            return
        mirror.ensure_group(self.redis)
        self.subscribe()
        self.store_pending()
        self.recover(self.own_pending_entries())
        self.requeue_lost_tasks()
        self.backlog = True
        log.info("Redis is back")

    def serve_workers_without_redis(self, timeout: float) -> None:
        """Keep heartbeats and results flowing while Redis is away; results wait in `unstored`."""
        try:
            ready = self.wait(timeout)
            now = self.clock()
            if ready:
                self.on_ready(ready, now)
            self.tick(now)
        except (redis.ConnectionError, redis.TimeoutError):
            pass

    def requeue_lost_tasks(self) -> int:
        """Queue again the tasks the database holds as QUEUED but Redis no longer has (it
        restarted without its data): at start-up and whenever Redis comes back. Only rows
        younger than the result TTL: an older one's hash may simply have expired after the
        task finished. The enqueue script skips any task Redis has meanwhile, so dispatchers
        sweeping at the same moment never queue a task twice."""
        since = timezone.now() - datetime.timedelta(seconds=self.config.result_ttl)
        after, requeued = None, 0
        while page := services.tasks_queued_since(since, after=after, limit=REQUEUE_PAGE):
            after = page[-1]
            missing = mirror.missing_tasks(self.redis, [str(task_id) for _, task_id in page])
            if missing:
                requeued += len(mirror.enqueue(self.redis, services.tasks_to_queue(missing), only_missing=True))
        if requeued:
            log.warning("re-queued %d task(s) that Redis had lost (it restarted without its data?)", requeued)
        return requeued

    def own_pending_entries(self) -> list:
        """Entries delivered to this dispatcher but not acknowledged and not held: claimed
        just as Redis went away."""
        response = self.redis.xreadgroup(mirror.GROUP, self.config.consumer, {mirror.STREAM: "0"}, count=10_000)
        entries = response[0][1] if response else []
        held = {f.entry_id for f in self.in_flight.values()}
        return [(entry_id, fields) for entry_id, fields in entries if fields and entry_id not in held]

    def refresh_liveness(self) -> None:
        self.redis.set(mirror.dispatcher_key(self.config.consumer), self.mode, ex=mirror.DISPATCHER_TTL)

    def reclaim_from_dead_dispatchers(self) -> None:
        """Take over stream entries held by dispatchers whose liveness key expired."""
        for consumer in self.redis.xinfo_consumers(mirror.STREAM, mirror.GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name == self.config.consumer or self.redis.exists(mirror.dispatcher_key(name)):
                continue
            pending = self.redis.xpending_range(mirror.STREAM, mirror.GROUP, "-", "+", 1000, consumername=name)
            if not pending:
                self.redis.xgroup_delconsumer(mirror.STREAM, mirror.GROUP, name)
                continue
            ids = [p["message_id"] for p in pending]
            claimed = [e for e in self.redis.xclaim(mirror.STREAM, mirror.GROUP, self.config.consumer, 0, ids)
                       if e[1]]
            log.warning("reclaimed %d task(s) from dead dispatcher %s", len(claimed), name)
            self.recover(claimed)

    def recover(self, entries: list) -> None:
        """Reclaimed entries: never started ones run now; ones that were running count as lost."""
        queued = [(entry, mirror.parse_stream_fields(entry[1])) for entry in entries]
        pipe = self.redis.pipeline(transaction=False)
        for _, q in queued:
            pipe.hget(mirror.task_key(q.task_id), "status")
        fresh, lost = [], []
        for (entry, q), status in zip(queued, pipe.execute()):
            if status == TaskStatus.RUNNING.value.encode():
                self.in_flight[q.task_id] = InFlight(q, entry[0])
                lost.append(q.task_id)
            else:  # queued, or already final: start() runs the first and forgets the second
                fresh.append(entry)
        if lost:
            self.lose(lost, "dispatcher died while the task was running")
        if fresh:
            self.start(fresh, self.clock())
