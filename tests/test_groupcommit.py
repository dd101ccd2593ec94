"""Group commit of task rows: threads that submit together share one transaction, and each
still learns its own outcome."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection

from functions.groupcommit import GroupInsert
from functions.models import Function, Task
from scripts.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def rows(function: Function, n: int) -> list[Task]:
    return [Task(function=function, payload=b"p", payload_size=1) for _ in range(n)]


@pytest.fixture
def function():
    return Function.objects.create(name="f", payload=b"f", payload_size=1)


def run_together(group: GroupInsert, batches: list[list[Task]]) -> list[BaseException | None]:
    """Queue every batch while the writer mutex is held elsewhere, then let them go."""
    outcomes: list[BaseException | None] = [None] * len(batches)

    def submit(i: int) -> None:
        try:
            group.insert(batches[i])
        except Exception as exc:
            outcomes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(batches))]
    with group._writer:  # a write in progress: everyone who arrives now waits for the next one
        for thread in threads:
            thread.start()
        wait_until(lambda: len(group._queue) == len(batches), timeout=10)
    for thread in threads:
        thread.join(10)
    return outcomes


def test_threads_that_submit_together_share_one_transaction(function, monkeypatch):
    group, groups = GroupInsert(), []
    write = GroupInsert._write
    monkeypatch.setattr(GroupInsert, "_write", staticmethod(lambda jobs: (groups.append(len(jobs)), write(jobs))))
    outcomes = run_together(group, [rows(function, 3) for _ in range(8)])
    assert outcomes == [None] * 8
    assert groups == [8]  # one transaction for all eight
    assert Task.objects.count() == 24


def test_a_refused_batch_fails_only_its_own_submit(function):
    doomed = Function.objects.create(name="gone", payload=b"g", payload_size=1)
    batches = [rows(function, 2), rows(doomed, 2), rows(function, 2)]
    Function.objects.filter(id=doomed.id).delete()  # deleted after its caller looked it up
    outcomes = run_together(GroupInsert(), batches)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError)
    assert Task.objects.filter(function=function).count() == 4 and Task.objects.count() == 4


def test_a_lone_submit_goes_straight_through(function):
    group = GroupInsert()
    group.insert(rows(function, 1))
    assert Task.objects.count() == 1 and group._queue == []
