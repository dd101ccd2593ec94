"""Separate hosts on one machine: network namespaces on a private LAN (tests and `make cluster`).

A `Lan` is a bridge in the root namespace with one veth pair per host; each host is a
network namespace whose only interfaces are its loopback and its end of the pair. Addresses
come from 198.18.0.0/15 (RFC 2544: set aside for network benchmark tests), one /24 per LAN,
chosen at random among those no interface here already uses; the bridge holds the LAN's .1,
so servers in the root namespace (Redis, PostgreSQL) can listen there and nowhere else.
Names carry a random tag, so concurrent runs never collide, and `remove` deletes every
namespace and link it made, and only those. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import subprocess
from dataclasses import dataclass, field

BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
LAN_PREFIX = 24


class NetnsUnavailable(RuntimeError):
    """Raised when this machine will not make namespaces or links (not root, or the kernel refuses)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (tried for real)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    lan = Lan()
    try:
        lan.create()
        lan.add_host("probe")
    except (NetnsUnavailable, FileNotFoundError) as exc:
        return f"the kernel refused a network namespace, bridge or veth pair: {exc}"
    finally:
        lan.remove()
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = ip("-4", "-o", "addr", "show").stdout
    return [ipaddress.ip_interface(line.split()[3]).network for line in out.splitlines() if " inet " in line]


def _free_lan() -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = list(BENCHMARK_RANGE.subnets(new_prefix=LAN_PREFIX))
    random.shuffle(candidates)
    for network in candidates:
        if not any(network.overlaps(u) for u in used):
            return network
    raise NetnsUnavailable("no free /24 left in 198.18.0.0/15")


@dataclass
class Host:
    """One network namespace with one link to the LAN."""

    name: str
    namespace: str
    address: str
    root_link: str  # the veth end in the root namespace, on the bridge: set down to cut the host off

    def argv(self, command: list[str]) -> list[str]:
        """`command` run inside this host (ip netns exec execs it: the pid stays the same)."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def link(self, up: bool) -> None:
        ip("link", "set", self.root_link, "up" if up else "down")


@dataclass
class Lan:
    tag: str = field(default_factory=lambda: "fs" + secrets.token_hex(3))
    network: ipaddress.IPv4Network | None = None
    hosts: list[Host] = field(default_factory=list)
    bridge_made: bool = False

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        """The bridge's address: where servers of the root namespace listen for the hosts."""
        return str(self.network.network_address + 1)

    def create(self) -> "Lan":
        self.network = self.network or _free_lan()
        ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_made = True
        ip("addr", "add", f"{self.gateway}/{LAN_PREFIX}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        host = Host(name, f"{self.tag}-{name}", str(self.network.network_address + 10 + index),
                    f"{self.tag}h{index}")
        inner = f"{self.tag}n{index}"
        self.hosts.append(host)  # before creating anything: remove() then cleans up a half-made host
        ip("netns", "add", host.namespace)
        ip("link", "add", host.root_link, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", host.namespace)
        ip("link", "set", host.root_link, "master", self.bridge, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/{LAN_PREFIX}", "dev", inner)
        ip("-n", host.namespace, "link", "set", inner, "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def remove(self) -> None:
        """Delete every namespace and link this LAN made (deleting a namespace deletes its
        veth end, and with it the pair); safe to call twice or after a partial create."""
        for host in self.hosts:
            ip("netns", "delete", host.namespace, check=False)
            ip("link", "delete", host.root_link, check=False)
        self.hosts.clear()
        if self.bridge_made:
            ip("link", "delete", self.bridge, check=False)
            self.bridge_made = False
