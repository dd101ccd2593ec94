"""The worker side speaks the same status words as the database, without importing Django."""

from functions.models import Task
from workers.protocol import FINAL_STATUSES, TaskStatus


def test_status_vocabularies_agree():
    assert [s.value for s in TaskStatus] == list(Task.Status.values)
    assert FINAL_STATUSES == {Task.Status.COMPLETED, Task.Status.FAILED}
