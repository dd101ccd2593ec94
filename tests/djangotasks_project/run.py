"""Enqueue the project's tasks, wait for them through `refresh()`, print what Django's API says."""

import json
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djangotasks_project.settings")
django.setup()

from django_tasks import TaskResultStatus, default_task_backend  # noqa: E402

from tests.djangotasks_project.tasks import multiply, refuse  # noqa: E402


def finished(result, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while not result.is_finished and time.monotonic() < deadline:
        time.sleep(0.1)
        result.refresh()
    return result


def main() -> int:
    ok = multiply.enqueue(6, b=7)
    bad = refuse.enqueue("not today")
    report = {"enqueued_status": ok.status, "supports_get_result": default_task_backend.supports_get_result}
    finished(ok)
    finished(bad)
    again = multiply.get_result(ok.id)  # by id, as another process would
    report.update(status=ok.status, value=ok.return_value, again=again.return_value,
                  failed_status=bad.status, error_class=bad.errors[0].exception_class.__name__,
                  traceback=bad.errors[0].traceback, successful=ok.status == TaskResultStatus.SUCCESSFUL)
    try:
        report["failed_return_value"] = bad.return_value  # raises, as Django's API says
    except ValueError as exc:
        report["failed_return_value"] = str(exc)
    try:
        refuse.get_result(ok.id)
    except Exception as exc:
        report["mismatch"] = type(exc).__name__
    try:
        multiply.get_result("6f1b6a6e-0000-4000-8000-000000000000")
    except Exception as exc:
        report["missing"] = type(exc).__name__
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
