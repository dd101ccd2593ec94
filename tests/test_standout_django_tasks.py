"""Django's Tasks framework as a front door (issue 16, item 7): a separate Django project,
using only the public django_tasks API, runs its @task functions on a real platform."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from functions.models import Function
from tests.platform import start_platform
from tests.stack import REPO


def test_a_django_project_enqueues_and_reads_results_through_django_tasks(stack):
    platform = start_platform(stack, "local", 2)
    env = {**os.environ, "FAAS_URL": platform.api.url, "PYTHONPATH": str(REPO),
           "DJANGO_SETTINGS_MODULE": "tests.djangotasks_project.settings"}
    done = subprocess.run([sys.executable, "-m", "tests.djangotasks_project.run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["enqueued_status"] == "READY" and report["supports_get_result"] is True
    assert report["status"] == "SUCCESSFUL" and report["successful"]
    assert report["value"] == report["again"] == {"product": 42}
    assert report["failed_status"] == "FAILED" and report["error_class"] == "PermissionError"
    assert "not today" in report["traceback"] and "Traceback" in report["traceback"]
    assert report["failed_return_value"] == "Task failed"
    assert report["mismatch"] == "TaskResultMismatch"
    assert report["missing"] == "TaskResultDoesNotExist"
    names = set(Function.objects.values_list("name", flat=True))
    assert names == {"tests.djangotasks_project.tasks.multiply", "tests.djangotasks_project.tasks.refuse"}
