"""`make cluster`, as a user runs it: the launcher starts Redis, PostgreSQL, the web tier,
two dispatchers and worker hosts in network namespaces, prints where everything is, serves
tasks on every host, and on Ctrl-C stops all of it and removes its namespaces."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter

import pytest

from scripts import netns
from scripts.stack import REPO
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def netns_usable():
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)


def namespaces() -> set[str]:
    return {line.split()[0] for line in netns.ip("netns", "list").stdout.splitlines() if line.strip()}


def test_make_cluster_serves_tasks_on_every_host_and_ctrl_c_removes_everything(netns_usable, tmp_path):
    output = tmp_path / "cluster.out"
    with open(output, "wb") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "scripts.cluster", "--hosts", "2", "--workdir",
                                     str(tmp_path / "cluster")], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        def started() -> str | None:
            text = output.read_text()
            assert launcher.poll() is None, f"the launcher exited:\n{text}"
            return text if "Press Ctrl-C" in text else None

        banner = wait_until(started, timeout=150, interval=0.2, message="the cluster did not come up")
        api_url = re.search(r"REST API \(gunicorn\):\s+(\S+)", banner).group(1)
        hosts = dict(re.findall(r"worker host (\w+): namespace (\S+),", banner))
        assert len(hosts) == 2 and set(hosts.values()) <= namespaces(), banner
        assert banner.count("dispatcher pid") == 2
        assert re.search(r"Redis \(append-only\):\s+redis://127\.0\.0\.1:", banner)
        assert re.search(r"PostgreSQL:\s+postgres://", banner)

        api = Api(api_url)
        function_id = api.register(ff.record_execution)
        runs = tmp_path / "runs.txt"
        task_ids = [api.submit(function_id, str(runs), i, 0.2) for i in range(16)]
        assert [api.value(t, wait=60) for t in task_ids] == list(range(16))
        inode = {f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]": name for name, ns in hosts.items()}
        per_host = Counter(inode.get(line.split()[1], "elsewhere") for line in runs.read_text().splitlines())
        assert set(per_host) == set(hosts), per_host  # every host ran tasks, nothing ran outside them

        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C
        assert launcher.wait(60) == 0, output.read_text()[-3000:]
        assert not set(hosts.values()) & namespaces()
        tag = next(iter(hosts.values())).split("-")[0]
        assert tag not in netns.ip("link", "show").stdout
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGINT)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
