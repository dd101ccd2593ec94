"""The client and every workers module import where Django cannot be imported at all."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import pytest

import workers
from tests.stack import REPO

# Runs first in a fresh interpreter: any import of Django (or DRF, Channels) raises.
BLOCKER = textwrap.dedent("""
    import sys

    class NoDjango:
        BLOCKED = ("django", "rest_framework", "channels", "daphne", "drf_spectacular")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked: this code must not need Django")
            return None

    sys.meta_path.insert(0, NoDjango())
    try:
        import django
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block django")
""")


def run_without_django(code: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # no DJANGO_SETTINGS_MODULE either
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_client_imports_without_django():
    done = run_without_django("""
        from functions.client import APIError, FaaSClient, FaaSExecutor, TaskFuture
        from functions.shipping import Shipper
        client = FaaSClient("http://127.0.0.1:9", token="t")
        FaaSExecutor(client).shutdown()
        assert not [m for m in sys.modules if m.split(".")[0] in ("django", "rest_framework")]
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_blocker_blocks():
    done = run_without_django("import functions.models")
    assert done.returncode != 0 and "blocked" in done.stderr


WORKER_MODULES = sorted(m.name for m in pkgutil.walk_packages(workers.__path__, "workers."))


def test_workers_package_has_modules():
    assert {"workers.serialization", "workers.exceptions", "workers.protocol", "workers.pool"} <= set(WORKER_MODULES)


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_every_workers_module_imports_without_django(module):
    done = run_without_django(f"""
        import importlib
        importlib.import_module({module!r})
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
