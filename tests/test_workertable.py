"""The heartbeat and placement rules of the worker table, on a fake clock."""

from dispatch.workertable import WorkerTable
from workers.protocol import WorkerInfo


def table() -> WorkerTable:
    return WorkerTable(interval=1.0, liveness=3)


def test_worker_expires_after_missed_heartbeats_and_not_before():
    t = table()
    t.register(b"a", WorkerInfo(2), now=0.0)
    assert t.expired(2.9) == []
    assert t.seen(b"a", now=2.9)
    assert t.expired(5.8) == []
    assert t.expired(5.9) == [b"a"]


def test_unknown_worker_is_not_seen():
    assert table().seen(b"ghost", now=0.0) is False


def test_push_picks_the_worker_with_most_free_processes():
    t = table()
    t.register(b"small", WorkerInfo(1), 0.0)
    t.register(b"big", WorkerInfo(4), 0.0)
    t.assign(b"big", "t1")
    t.assign(b"big", "t2")
    assert t.pick().identity == b"big"  # 2 free against 1
    t.assign(b"big", "t3")
    assert t.pick().identity in (b"small", b"big")
    t.assign(b"small", "t4")
    t.assign(b"big", "t5")
    assert t.pick() is None and t.push_capacity() == 0


def test_release_frees_a_process_and_forgets_the_holder():
    t = table()
    t.register(b"a", WorkerInfo(1), 0.0)
    t.assign(b"a", "t1")
    assert t.get(b"a").free == 0
    assert t.release("t1").identity == b"a"
    assert t.get(b"a").free == 1 and "t1" not in t.holder


def test_reconnected_worker_counts_its_running_tasks_as_busy_until_they_finish():
    t = table()
    t.register(b"a", WorkerInfo(2, holding=("old-1", "old-2")), 0.0)
    assert t.push_capacity() == 0
    t.release("not-its-task", identity=b"a")  # a result it had no business sending frees nothing
    assert t.push_capacity() == 0
    t.release("old-1", identity=b"a")
    assert t.push_capacity() == 1


def test_only_the_holder_of_a_task_may_report_it():
    t = table()
    t.register(b"a", WorkerInfo(2), 0.0)
    t.register(b"b", WorkerInfo(2, holding=("adopted",)), 0.0)
    t.assign(b"a", "t1")
    assert t.holds(b"a", "t1") and not t.holds(b"b", "t1") and not t.holds(b"stranger", "t1")
    assert t.holds(b"b", "adopted") and not t.holds(b"a", "adopted")


def test_a_task_taken_over_from_a_dead_dispatcher_is_adopted_by_the_worker_running_it():
    t = table()
    t.register(b"b", WorkerInfo(2, holding=("adopted",)), 0.0)
    assert t.adopt("adopted").identity == b"b" and t.holder["adopted"] == b"b"
    assert t.adopt("unknown") is None
    assert t.get(b"b").busy == 1


def test_pull_capacity_is_what_workers_asked_for_within_their_free_processes():
    t = table()
    entry, _ = t.register(b"a", WorkerInfo(2), 0.0)
    assert t.pull_capacity() == 0
    entry.credit = 5
    assert t.pull_capacity() == 2
    t.assign(b"a", "t1")
    assert entry.credit == 4 and t.pull_capacity() == 1


def test_draining_worker_gets_no_new_work():
    t = table()
    entry, _ = t.register(b"a", WorkerInfo(2), 0.0)
    entry.draining = True
    assert t.pick() is None and t.push_capacity() == 0


def test_re_registration_keeps_what_the_worker_still_holds_and_returns_what_it_lost():
    t = table()
    t.register(b"a", WorkerInfo(2), 0.0)
    t.assign(b"a", "kept")
    t.assign(b"a", "lost")
    entry, missing = t.register(b"a", WorkerInfo(2, holding=("kept",)), 1.0)
    assert missing == ["lost"] and entry.tasks == {"kept"} and t.holder == {"kept": b"a"}
    assert entry.free == 1
