"""The task store's state machine, driven at random against Redis and the in-memory twin
together: after every step no final state has changed, and the two stores agree."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from functions.taskstore import Claim, QueuedTask, TaskStore
from functions.taskstore.memory import MemoryTaskStore
from workers.protocol import Result

TTL = 3600
CONSUMERS = ("d1", "d2")

_redis_url: str | None = None


@pytest.fixture(autouse=True)
def _point_at_redis(redis_server):
    global _redis_url
    _redis_url = redis_server.url
    yield
    _redis_url = None


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def fresh(self):
        self.redis = TaskStore.connect(_redis_url)
        self.redis.redis.flushall()
        self.memory = MemoryTaskStore()
        self.stores = (self.redis, self.memory)
        for store in self.stores:
            store.ensure_group()
        self.tasks: list[str] = []
        self.queued: dict[str, QueuedTask] = {}
        self.entries: list[dict[str, bytes]] = [{}, {}]  # per store: task id -> entry id it holds
        self.final: dict[str, tuple[str, bytes]] = {}  # the first final state each task reached
        self.counter = 0  # ids and results from a counter: a replayed example draws the same choices

    def next(self) -> int:
        self.counter += 1
        return self.counter

    def teardown(self):
        if hasattr(self, "redis"):
            self.redis.close()

    # --- transitions ------------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def submit(self, n):
        tasks = [QueuedTask(str(uuid.UUID(int=self.next())), "f", "", b"args") for _ in range(n)]
        for store in self.stores:
            assert store.enqueue(tasks) == list(range(1, n + 1))
        for t in tasks:
            self.tasks.append(t.task_id)
            self.queued[t.task_id] = t

    @rule(consumer=st.sampled_from(CONSUMERS), count=st.integers(1, 3))
    def claim(self, consumer, count):
        answers = []
        for i, store in enumerate(self.stores):
            _, claimed = store.exchange([], TTL, consumer, count, 1.0)
            for c in claimed:
                if c.outcome == Claim.STARTED:
                    self.entries[i][c.task.task_id] = c.entry_id
                else:
                    store.forget([c.entry_id])
            answers.append([(c.task.task_id, c.outcome) for c in claimed])
        assert answers[0] == answers[1]

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), status=st.sampled_from(["COMPLETED", "FAILED"]))
    def finish(self, data, status):
        task_id = data.draw(st.sampled_from(self.tasks))
        result = Result(task_id, status, str(self.next()).encode(), "boom" if status == "FAILED" else "")
        won = [store.finish([result], TTL)[0] for store in self.stores]
        assert won[0] == won[1]
        if won[0]:
            assert task_id not in self.final, "a second final state was accepted"
            self.final[task_id] = (status, result.result)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), queued_only=st.booleans())
    def cancel(self, data, queued_only):
        self.cancel_task(data.draw(st.sampled_from(self.tasks)), queued_only)

    @precondition(lambda self: self.entries[1])
    @rule(data=st.data())
    def requeue(self, data):
        """A held task is lost with its worker and retried (refused if it became final)."""
        self.requeue_task(data.draw(st.sampled_from(sorted(self.entries[1]))))

    @precondition(lambda self: self.entries[1])
    @rule(data=st.data(), cancel_first=st.booleans())
    def lose_worker(self, data, cancel_first):
        """A held task's worker is lost (maybe just after the task was cancelled): with
        retries left it is re-queued, unless it is final."""
        task_id = data.draw(st.sampled_from(sorted(self.entries[1])))
        if cancel_first:
            self.cancel_task(task_id, queued_only=False)
        self.requeue_task(task_id)

    def requeue_task(self, task_id):
        q = self.queued[task_id]
        again = [store.requeue([(self.entries[i].pop(task_id), q.again(q.attempt + 1))])[0]
                 for i, store in enumerate(self.stores)]
        assert again[0] == again[1]
        assert again[0] == (task_id not in self.final)

    def cancel_task(self, task_id, queued_only):
        result = Result(task_id, "FAILED", b"cancelled", "WorkerFailureException: cancelled")
        won = [store.finish([result], TTL, only_if="QUEUED" if queued_only else "")[0] for store in self.stores]
        assert won[0] == won[1]
        if won[0]:
            assert task_id not in self.final, "a second final state was accepted"
            self.final[task_id] = ("FAILED", b"cancelled")

    @precondition(lambda self: self.entries[1])
    @rule(data=st.data())
    def settle(self, data):
        """The database took a held task's final state: its entry is acknowledged."""
        task_id = data.draw(st.sampled_from(sorted(self.entries[1])))
        if task_id in self.final:
            for i, store in enumerate(self.stores):
                store.forget([self.entries[i].pop(task_id)])

    @rule(consumer=st.sampled_from(CONSUMERS))
    def take_over(self, consumer):
        """Another dispatcher takes over `consumer`'s pending entries (it died)."""
        answers = []
        for store in self.stores:
            claimed = store.start(store.own_pending(consumer), "heir", 2.0)
            answers.append(sorted((c.task.task_id, c.outcome) for c in claimed))
        assert answers[0] == answers[1]

    @rule()
    def purge(self):
        purged = [sorted(store.purge_queued(b"purged", "purged", TTL, 3.0)) for store in self.stores]
        assert purged[0] == purged[1]
        for task_id in purged[0]:
            assert task_id not in self.final
            self.final[task_id] = ("FAILED", b"purged")

    @precondition(lambda self: self.final)
    @rule(data=st.data())
    def repair(self, data):
        """Recovery writes the database's final state (the first one) back over Redis."""
        task_id = data.draw(st.sampled_from(sorted(self.final)))
        status, result = self.final[task_id]
        for store in self.stores:
            store.repair([(Result(task_id, status, result, ""), {"owner": "", "function_id": "f"})], TTL)

    # --- what must always hold ----------------------------------------------------------

    @invariant()
    def final_states_never_change_and_the_stores_agree(self):
        if not hasattr(self, "redis"):
            return
        for task_id in self.tasks:
            records = [store.read(task_id) for store in self.stores]
            assert (records[0] or {}).get("status") == (records[1] or {}).get("status"), task_id
            if task_id in self.final:
                status, result = self.final[task_id]
                for record in records:
                    assert record["status"].decode() == status and record["result"] == result
        streams = [sorted(t for page in store.stream_entries() for _, t in page) for store in self.stores]
        assert streams[0] == streams[1]


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.function_scoped_fixture])
test_store_state_machine = StoreMachine.TestCase
