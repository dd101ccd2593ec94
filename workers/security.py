"""CURVE keys for dispatcher <-> worker links: generate them, and secure a socket with them.

Ironhouse pattern (pyzmq's examples/security/ironhouse.py): the dispatcher's socket is a
CURVE server that only accepts clients whose public key sits in an allow-list directory,
checked by a ZAP authenticator thread; each worker proves itself with its own keypair and
pins the dispatcher's public key. Standard library and pyzmq only: workers import this.

A key directory, as `generate_keys` writes it on the dispatcher machine::

    DIR/server.key              dispatcher public key   -> copy to every worker machine
    DIR/server.key_secret       dispatcher secret key   (0600, never leaves this machine)
    DIR/workers/NAME.key        worker NAME public key
    DIR/workers/NAME.key_secret worker NAME keypair     (0600) -> copy to that worker machine
    DIR/authorized/NAME.key     public keys allowed to connect (copy in keys made elsewhere)

A worker machine needs the same layout with just two files: `DIR/server.key` and
`DIR/workers/NAME.key_secret` (the secret file carries the public key too).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zmq
import zmq.auth
import zmq.auth.thread
from zmq.utils import z85

log = logging.getLogger(__name__)

SERVER_NAME = "server"  # basename of the dispatcher's keypair in the key directory
WORKERS_DIR = "workers"  # subdirectory holding one keypair per worker
AUTHORIZED_DIR = "authorized"  # allow-list: public keys of workers that may connect
DEFAULT_WORKER = "worker"  # the worker keypair generate_keys makes, and secure_client's default
PUBLIC_SUFFIX = ".key"  # zmq.auth's names; the authenticator loads every *.key in authorized/
SECRET_SUFFIX = ".key_secret"
SECRET_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

DENIAL_REPORT_INTERVAL = 60.0  # seconds: each refused key is reported at most once per interval
DENIAL_REPORTS_PER_INTERVAL = 10  # and at most this many refused keys in all, against a flood of keys

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a plain file name: no separators, not hidden


def generate_keys(directory: str | os.PathLike) -> None:
    """Create the dispatcher keypair, an empty allow-list and one authorized worker keypair.

    Refuses to overwrite existing keys: a new server key would lock out every deployed worker.
    """
    root = Path(directory)
    _make_dir(root)
    _make_dir(root / AUTHORIZED_DIR)
    _create_keypair(root, SERVER_NAME)
    add_worker_key(root, DEFAULT_WORKER)


def add_worker_key(directory: str | os.PathLike, name: str) -> None:
    """Create keypair `name` under workers/ and authorize it by copying its public key in."""
    root = Path(directory)
    _check_name(name)
    if not _server_public(root).is_file():
        raise FileNotFoundError(
            f"{_server_public(root)} not found: run `python -m workers.security generate {root}` first")
    _make_dir(root / WORKERS_DIR)
    _make_dir(root / AUTHORIZED_DIR)
    authorized = root / AUTHORIZED_DIR / f"{name}{PUBLIC_SUFFIX}"
    if authorized.exists():
        raise FileExistsError(f"{authorized} already exists: pick another worker name")
    public, _ = _create_keypair(root / WORKERS_DIR, name)
    shutil.copyfile(public, authorized)


def secure_server(socket: zmq.Socket, keys_dir: str | os.PathLike) -> zmq.auth.thread.ThreadAuthenticator:
    """Make `socket` a CURVE server that admits only keys in authorized/; call before bind.

    Starts the ZAP authenticator on the socket's context (one per context) and returns
    it: the caller stops it at shutdown, before terminating the context. Keys copied into
    authorized/ later count only after `configure_curve` runs again (or a restart).
    """
    _require_fresh(socket, "bind")
    root = Path(keys_dir)
    public, secret = _load_keypair(root / f"{SERVER_NAME}{SECRET_SUFFIX}")
    allowed = _authorized_dir(root)
    authenticator = ReportingAuthenticator(socket.context)
    authenticator.start()
    try:
        authenticator.configure_curve(domain="*", location=str(allowed))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
    except BaseException:
        authenticator.stop()
        raise
    return authenticator


def secure_client(socket: zmq.Socket, keys_dir: str | os.PathLike, worker_name: str = DEFAULT_WORKER) -> None:
    """Give `socket` worker `worker_name`'s keypair and pin the dispatcher's key; call before connect."""
    _require_fresh(socket, "connect")
    _check_name(worker_name)
    root = Path(keys_dir)
    public, secret = _load_keypair(root / WORKERS_DIR / f"{worker_name}{SECRET_SUFFIX}")
    server_public, _ = _load_key(_server_public(root))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


class DenialLog:
    """WARNING for each refused CURVE key, rate-limited: a refused worker retries its
    handshake every fraction of a second for ever, and an attacker can try a new key each
    time. Each key is reported at most once per `interval`, with how many refusals went
    unreported meanwhile, and at most `limit` keys per interval in all. Pure: the clock is
    injectable."""

    def __init__(self, interval: float = DENIAL_REPORT_INTERVAL, limit: int = DENIAL_REPORTS_PER_INTERVAL,
                 clock=time.monotonic):
        self.interval = interval
        self.limit = limit
        self.clock = clock
        self.reported: dict[str, float] = {}  # key -> when it was last reported
        self.unreported: dict[str, int] = {}  # key -> refusals since then
        self.window_start = -float("inf")
        self.window_reports = 0
        self.dropped = 0  # refusals not reported because the window's quota was spent

    def refused(self, key: str, address: str, reason: str) -> bool:
        """Record one refusal; log it unless rate-limited. True if it was logged."""
        now = self.clock()
        if now - self.reported.get(key, -float("inf")) < self.interval:
            self.unreported[key] = self.unreported.get(key, 0) + 1
            return False
        if now - self.window_start >= self.interval:
            self.window_start, self.window_reports = now, 0
        if self.window_reports >= self.limit:
            self.dropped += 1
            return False
        self.window_reports += 1
        self.reported[key] = now
        self._forget_older_than(now - self.interval)
        repeats = self.unreported.pop(key, 0)
        others, self.dropped = self.dropped, 0
        log.warning("refused a worker connection from %s: CURVE key %s (%s)%s%s", address or "?", key, reason,
                    f"; refused {repeats} more time(s) since its last report" if repeats else "",
                    f"; {others} refusal(s) of other keys went unreported" if others else "")
        return True

    def _forget_older_than(self, horizon: float) -> None:
        if len(self.reported) > 4 * self.limit:  # bounded memory under a flood of keys
            for key in [k for k, at in self.reported.items() if at < horizon]:
                self.reported.pop(key)
                self.unreported.pop(key, None)


class ReportingAuthenticator(zmq.auth.thread.ThreadAuthenticator):
    """pyzmq's ZAP authenticator logs refusals at DEBUG only; this one reports each refused
    key at WARNING (through DenialLog), with the address it came from."""

    def __init__(self, context: zmq.Context, denials: DenialLog | None = None):
        super().__init__(context)
        self.denials = denials or DenialLog()
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # ZAP request frames: version, request id, domain, address, identity, mechanism, credentials.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode("ascii", "replace")
            self.denials.refused(key, self._address, reason.decode("utf-8", "replace") or "refused")
        return allowed, reason


# --- helpers -----------------------------------------------------------------------------


def _server_public(root: Path) -> Path:
    return root / f"{SERVER_NAME}{PUBLIC_SUFFIX}"


def _make_dir(path: Path) -> None:
    """Create `path` private to its owner; an existing directory keeps its mode."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"worker name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")


def _create_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write `name.key` and `name.key_secret` into `directory`; never overwrites.

    The files are made in a private temporary directory, the secret chmod 0600 there, then
    renamed in, so the secret is never readable by others and never half-written.
    """
    public = directory / f"{name}{PUBLIC_SUFFIX}"
    secret = directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} already exists: refusing to overwrite a key")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as staging:
        made_public, made_secret = zmq.auth.create_certificates(staging, name)
        os.chmod(made_secret, SECRET_MODE)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    return public, secret


def _load_key(path: Path) -> tuple[bytes, bytes | None]:
    """`zmq.auth.load_certificate` with an error that says what file is missing and why it matters."""
    if not path.is_file():
        raise FileNotFoundError(f"CURVE key file {path} not found (see `python -m workers.security --help`)")
    return zmq.auth.load_certificate(path)


def _load_keypair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load_key(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key: expected a .key_secret file")
    return public, secret


def _authorized_dir(root: Path) -> Path:
    """The allow-list directory; missing is an error, since the authenticator would just deny all."""
    allowed = root / AUTHORIZED_DIR
    if not allowed.is_dir():
        raise FileNotFoundError(f"{allowed} not found: no worker could connect")
    if not any(allowed.glob(f"*{PUBLIC_SUFFIX}")):
        log.warning("%s holds no public keys: every worker will be refused", allowed)
    return allowed


def _require_fresh(socket: zmq.Socket, verb: str) -> None:
    """CURVE options only apply to endpoints made afterwards, so a late call would silently do nothing."""
    if socket.getsockopt(zmq.LAST_ENDPOINT):
        raise RuntimeError(f"secure the socket before {verb}: it already has an endpoint")


# --- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`generate DIR` or `add-worker DIR NAME`; prints where keys went and what to copy where."""
    parser = argparse.ArgumentParser(prog="python -m workers.security", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="create dispatcher keys and a first worker key")
    generate.add_argument("directory", type=Path)
    add = commands.add_parser("add-worker", help="create and authorize one more worker key")
    add.add_argument("directory", type=Path)
    add.add_argument("name")
    options = parser.parse_args(argv)
    name = DEFAULT_WORKER if options.command == "generate" else options.name
    try:
        if options.command == "generate":
            generate_keys(options.directory)
        else:
            add_worker_key(options.directory, name)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_report(options.directory, name))
    if options.command == "add-worker":
        print("Restart the dispatcher so it reloads the authorized/ directory.")
    return 0


def _report(root: Path, name: str) -> str:
    secret = root / WORKERS_DIR / f"{name}{SECRET_SUFFIX}"
    return "\n".join([
        f"Keys in {root}:",
        f"  dispatcher keypair  {root / (SERVER_NAME + SECRET_SUFFIX)}  (keep private; pass --keys {root})",
        f"  worker {name!r} keypair  {secret}  (authorized in {root / AUTHORIZED_DIR})",
        f"On the machine running worker {name!r}, copy into a directory KEYS (same layout):",
        f"  {_server_public(root)}  ->  KEYS/{SERVER_NAME}{PUBLIC_SUFFIX}",
        f"  {secret}  ->  KEYS/{WORKERS_DIR}/{name}{SECRET_SUFFIX}  (chmod 600)",
    ])


if __name__ == "__main__":
    sys.exit(main())
