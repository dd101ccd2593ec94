"""`make cluster N_HOSTS=3`: a multi-host platform on one machine, for trying and measuring
the deployment docs/deploy.md describes. Needs root (network namespaces).

Started here, in the root namespace: Redis (append-only), PostgreSQL, the REST API on
gunicorn, the websockets (admin dashboard) on daphne, and the dispatchers, which listen
with CURVE on the private LAN's address only. Each worker host is a network namespace on
that LAN (scripts.netns) with its own keypair, as a separate machine would be; host i
works for dispatcher i mod the number of dispatchers. Ctrl-C (or SIGTERM) stops
everything and removes every namespace and link.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts import netns
from scripts.postgres_server import PostgresServer
from scripts.redis_server import RedisServer, free_port
from scripts.stack import REPO, Proc, Stack, endpoint_of
from scripts.waiting import wait_until
from workers.security import SERVER_NAME, WORKERS_DIR, add_worker_key, generate_keys

HEARTBEAT = ("--heartbeat-interval", "1", "--heartbeat-liveness", "3")


@dataclass
class ClusterConfig:
    hosts: int = 3
    dispatchers: int = 2
    processes: int = 2  # worker processes per host
    mode: str = "push"
    web_port: int | None = None  # REST API (gunicorn); a free port when None
    ws_port: int | None = None  # websockets and admin (daphne); a free port when None
    workdir: Path = REPO / "var" / "cluster"
    durable: bool = True  # PostgreSQL with fsync on, as deployed; the benchmark may turn it off


@dataclass
class Cluster:
    config: ClusterConfig
    lan: netns.Lan = field(default_factory=netns.Lan)
    redis: RedisServer | None = None
    postgres: PostgresServer | None = None
    stack: Stack | None = None
    urls: dict[str, str] = field(default_factory=dict)
    dispatchers: list[Proc] = field(default_factory=list)
    workers: list[tuple[netns.Host, Proc]] = field(default_factory=list)
    admin_password: str = ""

    # --- the shared services: started once ----------------------------------------------

    def start(self) -> "Cluster":
        """Everything, as `make cluster` runs it; `stop` undoes whatever part got started."""
        self.start_services()
        self.start_fleet(self.config.dispatchers, self.config.hosts)
        return self

    def start_services(self) -> None:
        reason = netns.unavailable_reason()
        if reason:
            raise netns.NetnsUnavailable(reason)
        workdir = self.config.workdir
        shutil.rmtree(workdir, ignore_errors=True)  # keys and logs of the previous run
        (workdir / "logs").mkdir(parents=True)
        self.lan.create()
        self.redis = RedisServer(appendonly=True).start()
        self.postgres = PostgresServer(durable=self.config.durable).start()
        self.stack = Stack(redis_url=self.redis.url, database_url=self.postgres.url, workdir=workdir / "logs",
                           stop_with_parent=True)
        self.manage("migrate", "--no-input", "-v", "0")
        self.admin_password = secrets.token_urlsafe(12)
        self.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                   f"User.objects.create_superuser('admin', '', {self.admin_password!r})")
        generate_keys(workdir / "keys")
        self.urls["api"] = self.stack.web("gunicorn", port=self.config.web_port, threads=32)
        self.urls["ws"] = self.stack.web("daphne", port=self.config.ws_port)

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.stack.env(), check=True,
                       capture_output=True)

    # --- dispatchers and worker hosts: the benchmark restarts these per point ------------

    def start_fleet(self, dispatchers: int, hosts: int) -> None:
        keys = self.config.workdir / "keys"
        names = [f"h{i}" for i in range(hosts)]
        copies = [self.host_keys(keys, name) for name in names]  # before the dispatchers read the allow-list
        for _ in range(dispatchers):
            port = free_port(self.lan.gateway)
            self.dispatchers.append(self.stack.dispatcher(
                self.config.mode, "--bind", self.lan.gateway, "--keys", str(keys), *HEARTBEAT, port=port))
        for i, (name, copied) in enumerate(zip(names, copies)):
            host = self.lan.add_host(name)
            dispatcher = self.dispatchers[i % dispatchers]
            worker = self.stack.worker(self.config.mode, self.config.processes,
                                       endpoint_of(dispatcher, self.lan.gateway), "--keys", str(copied),
                                       "--key-name", host.name, *HEARTBEAT, host=host)
            self.workers.append((host, worker))
        wait_until(self.all_registered, timeout=60, message="not every worker host registered with its dispatcher")

    def host_keys(self, keys: Path, name: str) -> Path:
        """A keypair for one worker host, authorized on the dispatchers, and the copy that host holds."""
        add_worker_key(keys, name)
        copied = self.config.workdir / "hosts" / name
        (copied / WORKERS_DIR).mkdir(parents=True)
        shutil.copy(keys / f"{SERVER_NAME}.key", copied / f"{SERVER_NAME}.key")
        shutil.copy(keys / WORKERS_DIR / f"{name}.key_secret", copied / WORKERS_DIR / f"{name}.key_secret")
        return copied

    def all_registered(self) -> bool:
        for host, worker in self.workers:
            if not worker.alive():
                raise RuntimeError(f"worker host {host.name} exited:\n{worker.output()[-2000:]}")
        logs = "".join(d.output() for d in self.dispatchers)
        return all(f"-{worker.pid}-" in logs for _, worker in self.workers)

    def stop_fleet(self) -> None:
        """Stop worker hosts, then dispatchers (a drain each), and remove the hosts' namespaces."""
        for _, worker in self.workers:
            worker.stop()
        for dispatcher in self.dispatchers:
            dispatcher.stop()
        self.workers.clear()
        self.dispatchers.clear()
        for host in list(self.lan.hosts):
            netns.ip("netns", "delete", host.namespace, check=False)
            netns.ip("link", "delete", host.root_link, check=False)
        self.lan.hosts.clear()
        # Keys of removed hosts stay authorized only until the dispatchers restart; new ones are made per host.
        for path in (self.config.workdir / "hosts").glob("*"):
            shutil.rmtree(path, ignore_errors=True)
        for pattern in ("authorized/h*.key", "workers/h*.key*"):
            for path in (self.config.workdir / "keys").glob(pattern):
                path.unlink()

    def stop(self) -> None:
        try:
            if self.stack is not None:
                self.stack.close()
        finally:
            for server in (self.postgres, self.redis):
                if server is not None:
                    server.cleanup()
            self.lan.remove()

    # --- what the user sees ---------------------------------------------------------------

    def describe(self) -> str:
        lines = [f"FaaS cluster: {len(self.dispatchers)} {self.config.mode} dispatcher(s), "
                 f"{len(self.workers)} worker host(s) x {self.config.processes} processes",
                 f"  REST API (gunicorn):   {self.urls['api']}   (docs: {self.urls['api']}/docs)",
                 f"  websockets + admin (daphne): {self.urls['ws']}/admin/   user admin, password "
                 f"{self.admin_password}",
                 f"  Redis (append-only):   {self.redis.url}",
                 f"  PostgreSQL:            {self.postgres.url}   (data in {self.postgres.dir})",
                 f"  private LAN:           {self.lan.network} on bridge {self.lan.bridge} "
                 f"(this machine is {self.lan.gateway})"]
        for dispatcher in self.dispatchers:
            lines.append(f"  dispatcher pid {dispatcher.pid}:  {endpoint_of(dispatcher, self.lan.gateway)} "
                         f"(CURVE, keys in {self.config.workdir / 'keys'})")
        for host, worker in self.workers:
            lines.append(f"  worker host {host.name}: namespace {host.namespace}, {host.address}, pid {worker.pid}")
        lines += [f"  logs: {self.config.workdir / 'logs'}",
                  "  Anonymous API access is on (FAAS_ALLOW_ANONYMOUS=1): a local trial cluster.",
                  "Press Ctrl-C to stop everything."]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=3, help="worker hosts (network namespaces)")
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="worker processes per host")
    parser.add_argument("--mode", choices=["push", "pull"], default="push")
    parser.add_argument("--web-port", type=int, default=int(os.environ.get("FAAS_WEB_PORT", 0)) or None)
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "cluster", help="keys and logs")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.dispatchers < 1 or args.processes < 1:
        parser.error("--hosts, --dispatchers and --processes must be at least 1")
    cluster = Cluster(ClusterConfig(hosts=args.hosts, dispatchers=args.dispatchers, processes=args.processes,
                                    mode=args.mode, web_port=args.web_port, workdir=args.workdir.resolve()))
    stop = {"requested": False}

    def request_stop(signum, frame):  # only a flag: the loop below acts
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        try:
            cluster.start()
        except netns.NetnsUnavailable as exc:
            print(f"cannot start the cluster: {exc}", file=sys.stderr)
            return 2
        print(cluster.describe(), flush=True)
        while not stop["requested"]:
            for proc in cluster.stack.procs:
                if not proc.alive():
                    print(f"{proc.name} (pid {proc.pid}) exited; stopping the cluster:\n{proc.output()[-2000:]}",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        print("stopping the cluster", flush=True)
        cluster.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
