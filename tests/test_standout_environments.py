"""Environments checked before a task runs (issue 16, item 2): what a pickle needs is read
from its opcodes; workers say what they can import; the dispatcher sends a task only where
it can run, and fails at once, naming what is missing, a task no live worker can run."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import dill
import pytest
import requests.utils

from functions.models import Function, Task, Worker
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import start_platform
from tests.stack import endpoint_of
from workers import environment
from workers.exceptions import FunctionFailedException
from workers.serialization import encode

WORKER_PACKAGES = ("zmq", "pyzmq.libs", "dill")  # what a worker machine needs, and nothing else


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A virtualenv holding only a worker's own dependencies (pyzmq, dill): not the test
    environment's site-packages, so `requests`, `yaml`... cannot be imported there.
    (--system-site-packages would hand it everything; a .pth naming only the worker's
    packages gives it exactly those, without a download.)"""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    shim = root / "worker-packages"
    shim.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in WORKER_PACKAGES:
        if (site / name).exists():
            (shim / name).symlink_to(site / name)
    python = root / "venv" / "bin" / "python"
    bare_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(bare_site, "worker-packages.pth").write_text(str(shim) + "\n")
    probe = subprocess.run([str(python), "-c", "import zmq, dill; import requests"], capture_output=True, text=True)
    assert "No module named 'requests'" in probe.stderr, probe.stderr  # the point of this environment
    return str(python)


def test_needs_are_read_from_opcodes_without_unpickling():
    assert environment.needed_modules(dill.dumps(requests.utils.requote_uri)) == ("requests",)
    assert environment.needed_modules(dill.dumps(len)) == ()  # the standard library is everywhere
    assert environment.needed_modules(b"not a pickle") == ()
    assert environment.missing(("requests", "json"), ("zmq",)) == ["requests"]


def start_worker(stack, platform, python: str):
    return stack.spawn("bare-worker", [python, "-m", f"workers.{platform.mode}_worker", "1",
                                       endpoint_of(platform.dispatcher)])


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_tasks_go_only_to_workers_that_can_import_what_they_need(stack, bare_python, mode):
    platform = start_platform(stack, mode, 1, "--heartbeat-interval", "0.5")
    platform.workers[0].stop()  # begin with the bare worker alone
    platform.workers.clear()
    bare = start_worker(stack, platform, bare_python)
    api = platform.api
    answer = api.http.post(api.url + "/register_function", json={
        "name": "requote", "payload": encode(dill.dumps(requests.utils.requote_uri))}).json()
    assert Function.objects.get(id=answer["function_id"]).needs == ["requests"]
    plain = api.register(ff.add)
    assert api.value(api.submit(plain, 1, 2)) == 3  # the bare worker runs what it can
    error = api.failure(api.submit(answer["function_id"], "a b"))
    assert isinstance(error, FunctionFailedException)
    assert str(error) == "needs requests, which no live worker can import"

    full = platform.add_worker(1)  # the test environment: it has requests
    wait_until(lambda: Worker.objects.filter(pid=full.pid, alive=True).exists(), timeout=30,
               message="the dispatcher never registered the second worker")
    ids = [api.submit(answer["function_id"], f"a b {i}") for i in range(4)]
    assert [api.value(i) for i in ids] == [f"a%20b%20{i}" for i in range(4)]
    wait_until(lambda: all(t.worker_id for t in Task.objects.filter(id__in=ids)), timeout=30)
    assert {t.worker.pid for t in Task.objects.filter(id__in=ids).select_related("worker")} == {full.pid}
    assert bare.alive()

