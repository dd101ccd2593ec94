"""Workers on other hosts: the dispatcher and each worker host in a network namespace of
its own, linked by a private LAN (scripts.netns), CURVE + ZAP allow-list on, exactly as
the README's `--bind 0.0.0.0 --keys` deployment.

Redis listens only on the LAN's bridge address in the root namespace, where the web server
also runs; the database is the session's SQLite file, which every namespace sees on the
shared filesystem. Each run names its namespaces and links with a random tag and removes
them all in a finalizer, pass or fail.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq.auth

from scripts import netns
from scripts.redis_server import RedisServer
from scripts.stack import Proc, Stack
from tests import fixtures_functions as ff
from tests.helpers import wait_until
from tests.platform import Api
from tests.stack import endpoint_of
from workers.security import SERVER_NAME, WORKERS_DIR, add_worker_key, generate_keys

pytestmark = [
    pytest.mark.only_on("sqlite", why="the hosts share the database as a file; PostgreSQL listens on "
                                      "loopback, which no namespace reaches"),
    pytest.mark.timeout(240),
]

PORT = 7001  # inside the dispatcher's own namespace: nothing else listens there
HEARTBEAT = ("--heartbeat-interval", "0.5", "--heartbeat-liveness", "4")  # a host is lost after 2 s


@pytest.fixture(scope="module")
def netns_usable():
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lan(netns_usable, request):
    made = netns.Lan()
    request.addfinalizer(made.remove)  # first: whatever else fails, every namespace and link goes
    return made.create()


def host_keys(keys: Path, copy_to: Path, name: str) -> Path:
    """What an operator copies to worker host `name`: the dispatcher's public key and the host's keypair."""
    (copy_to / WORKERS_DIR).mkdir(parents=True)
    shutil.copy(keys / f"{SERVER_NAME}.key", copy_to / f"{SERVER_NAME}.key")
    shutil.copy(keys / WORKERS_DIR / f"{name}.key_secret", copy_to / WORKERS_DIR / f"{name}.key_secret")
    return copy_to


@dataclass
class Cluster:
    api: Api
    stack: Stack
    dispatcher: Proc
    endpoint: str
    hosts: dict[str, netns.Host]
    keys: dict[str, Path]
    side_effects: Path

    def worker(self, name: str, processes: int = 2) -> Proc:
        return self.stack.worker("push", processes, self.endpoint, "--keys", str(self.keys[name]),
                                 "--key-name", name, *HEARTBEAT, host=self.hosts[name])

    def host_of_runs(self) -> dict[int, list[str]]:
        """token -> the hosts (by name) that ran it, from the side-effect file."""
        by_namespace = {f"net:[{os.stat(f'/run/netns/{h.namespace}').st_ino}]": name
                        for name, h in self.hosts.items()}
        ran: dict[int, list[str]] = {}
        if self.side_effects.exists():
            for line in self.side_effects.read_text().splitlines():
                token, namespace = line.split()
                ran.setdefault(int(token), []).append(by_namespace.get(namespace, namespace))
        return ran

    def submit(self, count: int, seconds: float, first: int = 0) -> list[str]:
        function_id = self.api.register(ff.record_execution)
        return [self.api.submit(function_id, str(self.side_effects), first + i, seconds) for i in range(count)]


@pytest.fixture
def lan_redis(lan):
    """Redis on the bridge's address only, with a password; set up before (so stopped after) the stack."""
    server = RedisServer(host=lan.gateway)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def cluster(lan, lan_redis, stack_on, tmp_path):
    """A web server and Redis in the root namespace, a push dispatcher in host "dispatcher",
    and keys for worker hosts alpha and beta (allow-listed) and stranger (not)."""
    hosts = {name: lan.add_host(name) for name in ("dispatcher", "alpha", "beta", "stranger")}
    keys = tmp_path / "keys"
    generate_keys(keys)
    for name in ("alpha", "beta"):
        add_worker_key(keys, name)
    copies = {name: host_keys(keys, tmp_path / f"on-{name}", name) for name in ("alpha", "beta")}
    stranger = tmp_path / "on-stranger"
    (stranger / WORKERS_DIR).mkdir(parents=True)
    shutil.copy(keys / f"{SERVER_NAME}.key", stranger / f"{SERVER_NAME}.key")
    zmq.auth.create_certificates(str(stranger / WORKERS_DIR), "stranger")  # a keypair nobody authorized
    copies["stranger"] = stranger

    stack = stack_on(lan_redis.url)
    api = Api(stack.web())
    dispatcher = stack.dispatcher("push", "--bind", "0.0.0.0", "--keys", str(keys), "--retries", "1", *HEARTBEAT,
                                  port=PORT, host=hosts["dispatcher"])
    return Cluster(api, stack, dispatcher, endpoint_of(dispatcher, hosts["dispatcher"].address), hosts, copies,
                   tmp_path / "runs.txt")


def registrations(cluster: Cluster, worker: Proc) -> int:
    return sum(1 for line in cluster.dispatcher.output().splitlines()
               if "registered" in line and f"-{worker.pid}-" in line)


def test_tasks_run_on_both_worker_hosts_and_never_on_a_host_off_the_allow_list(cluster):
    stranger = cluster.worker("stranger")
    alpha, beta = cluster.worker("alpha"), cluster.worker("beta")
    wait_until(lambda: registrations(cluster, alpha) and registrations(cluster, beta), timeout=30,
               message="the allow-listed hosts never registered")
    task_ids = cluster.submit(16, 0.3)
    assert [cluster.api.value(t) for t in task_ids] == list(range(16))
    ran = cluster.host_of_runs()
    assert sorted(ran) == list(range(16)) and all(len(hosts) == 1 for hosts in ran.values()), ran
    per_host = Counter(hosts[0] for hosts in ran.values())
    assert set(per_host) == {"alpha", "beta"}, per_host
    assert registrations(cluster, stranger) == 0
    assert stranger.alive(), stranger.output()  # refused, not crashed: it simply never gets work


def test_a_host_cut_off_loses_its_tasks_to_the_other_and_takes_work_again_once_back(cluster):
    alpha, beta = cluster.worker("alpha"), cluster.worker("beta")
    wait_until(lambda: registrations(cluster, alpha) and registrations(cluster, beta), timeout=30)
    task_ids = cluster.submit(4, 4.0)  # two per host: push sends to the host with the most free processes
    wait_until(lambda: Counter(h[0] for h in cluster.host_of_runs().values()) == {"alpha": 2, "beta": 2},
               timeout=30, message="the first four tasks did not spread two per host")
    cut = [token for token, hosts in cluster.host_of_runs().items() if hosts == ["alpha"]]

    cluster.hosts["alpha"].link(up=False)
    wait_until(lambda: "missed heartbeat" in cluster.dispatcher.output(), timeout=20,
               message="the dispatcher never noticed the host was cut off")
    assert [cluster.api.value(t, wait=60) for t in task_ids] == [0, 1, 2, 3]  # --retries 1: re-queued to beta
    ran = cluster.host_of_runs()
    for token in cut:
        assert ran[token] == ["alpha", "beta"], ran  # started on alpha, finished on beta: no third run

    before = registrations(cluster, alpha)
    cluster.hosts["alpha"].link(up=True)
    wait_until(lambda: registrations(cluster, alpha) > before, timeout=40,
               message="the host never registered again after its link came back")
    more = cluster.submit(8, 0.5, first=100)
    assert [cluster.api.value(t) for t in more] == list(range(100, 108))
    assert "alpha" in {cluster.host_of_runs()[100 + i][0] for i in range(8)}
