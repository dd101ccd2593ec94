"""How a dispatcher recovers what others lost: a Redis outage, a Redis that restarted
without its data or with older data, and dispatchers that died holding tasks.

The database is the authority for final states. After Redis comes back (or changes, as in a
failover), `reconcile` makes Redis follow the database: entries of tasks the database holds
final are dropped and their Redis state rewritten from the row; QUEUED rows Redis no longer
has are queued again. RUNNING rows whose dispatcher is gone while Redis has no record of
them are settled (failed as lost, or re-queued while retries remain), never left RUNNING.
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING

import redis
from django.utils import timezone

from dispatch.state import InFlight
from functions import taskrows
from functions.taskstore import DISPATCHER_TTL, Claim
from workers import serialization
from workers.exceptions import WorkerFailureException
from workers.protocol import Result, TaskStatus

if TYPE_CHECKING:
    from dispatch.core import Dispatcher

log = logging.getLogger(__name__)

RECLAIM_INTERVAL = 2.0  # seconds between checks for entries held by dead dispatchers
ORPHAN_INTERVAL = 10.0  # seconds between sweeps of the database for tasks lost with their dispatcher
PAGE = 500  # rows or entries checked per round trip


class Recovery:
    """The recovery steps of one dispatcher; uses only the dispatcher's public methods."""

    def __init__(self, dispatcher: Dispatcher):
        self.d = dispatcher
        self.server_id: str | None = None
        self.suspects: dict[str, float] = {}  # dead-looking dispatcher name -> when first seen so
        self.next_orphan_sweep = 0.0

    # --- Redis outages -----------------------------------------------------------------

    def wait_for_redis(self, error: Exception) -> None:
        """Redis went away: keep the workers' results, retry with back-off, then pick up
        where we were (new subscription, our own unacknowledged entries, unsaved results)."""
        d = self.d
        log.warning("lost Redis (%s); retrying", error)
        backoff = 0.1
        while not d.stopped:
            if d.stopping and not d.in_flight:  # draining with nothing held: just go
                d.stopped = True
                return
            try:
                d.store.ping()
                break
            except (redis.ConnectionError, redis.TimeoutError):
                self.serve_workers_without_redis(backoff)
                backoff = min(backoff * 2, 2.0)
        if d.stopped:
            return
        d.store.ensure_group()
        d.subscribe()
        d.store_pending()
        self.reconcile()
        d.backlog = True
        log.info("Redis is back")

    def serve_workers_without_redis(self, timeout: float) -> None:
        """Keep heartbeats and results flowing while Redis is away; results wait in `unstored`."""
        d = self.d
        try:
            ready = d.wait(timeout)
            now = d.clock()
            if ready:
                d.on_ready(ready, now)
            d.tick(now)
        except (redis.ConnectionError, redis.TimeoutError):
            pass

    # --- periodic ----------------------------------------------------------------------

    def periodic(self, now: float) -> None:
        """Every RECLAIM_INTERVAL: a Redis that changed under us is reconciled; entries of dead
        dispatchers are taken over; now and then the database is swept for lost tasks."""
        d = self.d
        if d.store.server_id() != self.server_id:
            log.warning("Redis restarted or failed over (new server id); reconciling it with the database")
            self.reconcile()
        for name, entries in d.store.reclaim_from_dead(d.consumer):
            log.warning("reclaimed %d task(s) from dead dispatcher %s", len(entries), name)
            self.recover(entries)
        if now >= self.next_orphan_sweep:
            self.next_orphan_sweep = now + ORPHAN_INTERVAL
            self.settle_orphans(now)
        d.store.trim_throughput()

    # --- reconciliation ----------------------------------------------------------------

    def reconcile(self) -> None:
        """Make Redis follow the database: at start-up, after an outage, after a restart."""
        d = self.d
        self.server_id = d.store.server_id()
        d.writes.flush()  # our own final states first: the database must know what we told clients
        repaired = forgotten = 0
        held = {f.entry_id for f in d.in_flight.values()}
        for page in d.store.stream_entries(PAGE):
            ids = [task_id for _, task_id in page if task_id]
            final = taskrows.final_states(ids)
            final_ids = {r.task_id for r, _ in final}
            stale = [entry_id for entry_id, task_id in page if task_id in final_ids and entry_id not in held]
            if final:
                repaired += sum(d.store.repair(final, d.config.result_ttl))
            d.store.forget(stale)
            forgotten += len(stale)
        if repaired or forgotten:
            log.warning("Redis was behind the database: %d task(s) repaired, %d stale entries dropped",
                        repaired, forgotten)
        self.recover(d.store.own_pending(d.consumer), own=True)
        self.requeue_lost_tasks()

    def requeue_lost_tasks(self) -> int:
        """Queue again the tasks the database holds as QUEUED but Redis no longer has. Only
        rows younger than the result TTL: an older one's record may simply have expired. The
        enqueue script skips any task Redis has meanwhile, so dispatchers sweeping at the
        same moment never queue a task twice."""
        d = self.d
        since = timezone.now() - datetime.timedelta(seconds=d.config.result_ttl)
        after, requeued = None, 0
        while page := taskrows.queued_since(since, after=after, limit=PAGE):
            after = page[-1]
            missing = [t for t, s in zip([str(t) for _, t in page], d.store.statuses([str(t) for _, t in page]))
                       if s is None]
            if missing:
                requeued += len(d.store.enqueue(taskrows.queue_entries(missing), only_missing=True))
        if requeued:
            log.warning("re-queued %d task(s) that Redis had lost (it restarted without its data?)", requeued)
        return requeued

    def recover(self, entries: list, own: bool = False) -> None:
        """Entries taken over: never-started ones run now; ones that were running count as
        lost; ones already final (their dispatcher died before the database had them) have
        their final state copied to the database and are then forgotten."""
        d = self.d
        held = {f.entry_id for f in d.in_flight.values()}
        entries = [e for e in entries if e[0] not in held]
        if not entries:
            return
        claimed = d.take_over(entries, d.clock())
        lost = []
        for c in claimed:
            if c.outcome != Claim.WAS_RUNNING or c.task is None:
                continue
            timeout = c.task.timeout if c.task.timeout is not None else d.config.timeout
            deadline = None if timeout is None else d.clock() + timeout + d.config.deadline_grace
            d.in_flight[c.task.task_id] = flight = InFlight(c.task, c.entry_id, deadline=deadline)
            flight.worker = d.adopt(c.task.task_id)  # a worker that re-registered with us still runs it
            if flight.worker is None:
                lost.append(c)
        if lost:
            reason = "dispatcher lost Redis while the task was running" if own else \
                "dispatcher died while the task was running"
            d.lose([c.task.task_id for c in lost], reason)
        final = [c for c in claimed if c.outcome == Claim.FINAL and c.task is not None]
        if final:
            self.copy_final_states(final)

    def copy_final_states(self, claimed: list) -> None:
        """Final states Redis has and the database may not: handed to the writer, which writes
        them (a row already final keeps its own) and then acknowledges the entries."""
        d = self.d
        for c in claimed:
            state = d.store.read(c.task.task_id) or {}
            status = state.get("status", b"").decode()
            if status not in (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value):
                d.writes.forget([c.entry_id])
                continue
            result = Result(c.task.task_id, status, state.get("result", b""),
                            state.get("error", b"").decode(errors="replace"),
                            _float(state.get("started_at")), _float(state.get("finished_at")))
            d.writes.finish(result, None, c.task.attempt, c.entry_id)

    # --- tasks lost with their dispatcher and Redis ---------------------------------------

    def settle_orphans(self, now: float) -> None:
        """RUNNING rows whose dispatcher has been gone for a full liveness period and whose task
        Redis does not know: failed as lost, or re-queued while retries remain."""
        d = self.d
        cutoff = timezone.now() - datetime.timedelta(seconds=DISPATCHER_TTL)
        rows = taskrows.running_under({d.consumer}, cutoff, limit=PAGE)
        names = {name for _, name in rows}
        alive = d.store.live_dispatchers(names) if names else set()
        for name in alive:
            self.suspects.pop(name, None)
        dead = set()
        for name in names - alive:
            first = self.suspects.setdefault(name, now)
            if now - first >= DISPATCHER_TTL:
                dead.add(name)
        candidates = [(tid, name) for tid, name in rows if name in dead]
        if not candidates:
            return
        statuses = d.store.statuses([tid for tid, _ in candidates])
        orphans: dict[str, list[str]] = {}
        for (tid, name), status in zip(candidates, statuses):
            if status is None:  # Redis knows nothing: nobody else will ever settle it
                orphans.setdefault(name, []).append(tid)
        for name, ids in orphans.items():
            self.settle_lost(name, ids)
            self.suspects.pop(name, None)

    def settle_lost(self, dispatcher: str, task_ids: list[str]) -> None:
        d = self.d
        entries = {q.task_id: q for q in taskrows.queue_entries(task_ids, statuses=(TaskStatus.RUNNING.value,))}
        retry = [t for t, q in entries.items() if q.attempt - 1 <= d.config.retries]
        if retry:
            requeued = taskrows.requeue_rows(retry, dispatcher=dispatcher)
            d.store.enqueue([entries[t] for t in requeued], only_missing=True)
            log.warning("re-queued %d task(s) lost with dispatcher %s and Redis", len(requeued), dispatcher)
        rest = [t for t in task_ids if t not in set(retry)]
        if rest:
            reason = f"dispatcher {dispatcher} and Redis both lost the task while it ran"
            exc = WorkerFailureException(reason)
            result = Result("", TaskStatus.FAILED.value, serialization.dumps(exc),
                            f"WorkerFailureException: {reason}", None, timezone.now().timestamp())
            failed = taskrows.fail_lost(rest, dispatcher=dispatcher, result=result)
            d.store.repair(taskrows.final_states(failed), d.config.result_ttl)
            log.warning("failed %d task(s) lost with dispatcher %s and Redis", len(failed), dispatcher)


def _float(raw: bytes | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None
