"""A backend for Django's Tasks framework (the `django-tasks` backport, tested with 0.12.0)
that runs a Django project's `@task` functions on this platform.

In the *client* project's settings:

    TASKS = {"default": {"BACKEND": "functions.tasks_backend.FaaSTaskBackend",
                         "OPTIONS": {"URL": "http://faas.example:8000", "TOKEN": "..."}}}

`my_task.enqueue(*args)` registers the task's function (once per process; registering the
same bytes again is free: functions are content-addressed) under the task's module path and
submits the call with an idempotency key; the TaskResult's id is the platform's task id.
`get_result(id)` / `result.refresh()` read the state back: QUEUED → READY, RUNNING →
RUNNING, COMPLETED → SUCCESSFUL with the return value, FAILED → FAILED with a TaskError
naming the exception's class and its remote traceback, as Django's API expects.

It needs only the SDK (functions.client), Django and django-tasks: not this platform's app.
"""

from __future__ import annotations

import threading

from django.utils.module_loading import import_string
from django_tasks import TaskResult, TaskResultStatus
from django_tasks.backends.base import BaseTaskBackend
from django_tasks.base import TaskError
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.utils import get_module_path, normalize_json

from functions.client import APIError, FaaSClient

STATUSES = {"QUEUED": TaskResultStatus.READY, "RUNNING": TaskResultStatus.RUNNING,
            "COMPLETED": TaskResultStatus.SUCCESSFUL, "FAILED": TaskResultStatus.FAILED}


class FaaSTaskBackend(BaseTaskBackend):
    supports_defer = False  # the platform runs a task as soon as a worker is free
    supports_async_task = False
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.client = FaaSClient(self.options["URL"], token=self.options.get("TOKEN"),
                                 timeout=float(self.options.get("TIMEOUT", 30.0)))
        self._function_ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def enqueue(self, task, args, kwargs) -> TaskResult:
        self.validate_task(task)
        if task.takes_context:
            raise InvalidTaskError("The FaaS backend runs tasks in another process: takes_context is not supported.")
        task_id = self.client.submit_with(self._function_id(task), args, kwargs)
        return self._result(task, task_id, TaskResultStatus.READY, args, kwargs)

    def get_result(self, result_id: str) -> TaskResult:
        try:
            detail = self.client._call("GET", f"/tasks/{result_id}")
            body = self.client.poll(result_id)
        except APIError as exc:
            if exc.status_code == 404:
                raise TaskResultDoesNotExist(result_id) from None
            raise
        task = import_string(detail["function"])  # registered under the task's module path
        status = STATUSES[body["status"]]
        result = self._result(task, result_id, status, [], {})
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", normalize_json(self.client.outcome(body)))
        elif status == TaskResultStatus.FAILED:
            exc = self.client.failure(body)
            traceback = getattr(exc, "remote_traceback", None) or body.get("error", "")
            result.errors.append(TaskError(exception_class_path=get_module_path(type(exc)), traceback=traceback))
        return result

    def _function_id(self, task) -> str:
        """Register the task's function once per process, by value, named by its module path."""
        path = task.module_path
        with self._lock:
            if path not in self._function_ids:
                self._function_ids[path] = self.client.register(task.func, name=path)
            return self._function_ids[path]

    def _result(self, task, task_id: str, status, args, kwargs) -> TaskResult:
        return TaskResult(task=task, id=task_id, status=status, enqueued_at=None, started_at=None,
                          finished_at=None, last_attempted_at=None, args=list(args), kwargs=dict(kwargs),
                          backend=self.alias, errors=[], worker_ids=[])
