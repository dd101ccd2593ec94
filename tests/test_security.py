"""workers.security: key generation, the CLI, and CURVE admitting only authorized workers."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from workers import security

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parent.parent
REJECT_POLL_MS = 1000  # how long a rejected client gets to (wrongly) deliver a message
EVENT_TIMEOUT_MS = 5000  # ceiling on waiting for a handshake event from the monitor


@pytest.fixture
def keys(tmp_path) -> Path:
    directory = tmp_path / "keys"
    security.generate_keys(directory)
    return directory


@pytest.fixture
def zmq_sockets():
    """A factory for LINGER-0 sockets on two contexts (server side, client side), all closed at teardown.

    Two contexts stand in for two machines: the ZAP authenticator belongs to the server's.
    """
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    sockets: list[zmq.Socket] = []
    authenticators = []

    def make(kind: int, side: str = "client") -> zmq.Socket:
        sock = (server_ctx if side == "server" else client_ctx).socket(kind)
        sock.linger = 0
        sockets.append(sock)
        return sock

    make.authenticators = authenticators
    try:
        yield make
    finally:
        for sock in sockets:
            sock.close(linger=0)
        for authenticator in authenticators:
            authenticator.stop()  # before term: the ZAP thread holds sockets on server_ctx
        server_ctx.term()
        client_ctx.term()


@pytest.fixture
def server(keys, zmq_sockets):
    """A CURVE ROUTER on 127.0.0.1 and a monitor on its handshakes; yields (socket, endpoint, monitor)."""
    router = zmq_sockets(zmq.ROUTER, "server")
    zmq_sockets.authenticators.append(security.secure_server(router, keys))
    monitor = zmq_sockets(zmq.PAIR, "server")
    router.monitor("inproc://security-monitor", zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    monitor.connect("inproc://security-monitor")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, f"tcp://127.0.0.1:{port}", monitor
    router.disable_monitor()


def wait_for_event(monitor: zmq.Socket, wanted: int) -> dict:
    """Return the first monitor event whose kind is in the `wanted` mask; fail after EVENT_TIMEOUT_MS."""
    while monitor.poll(EVENT_TIMEOUT_MS):
        event = recv_monitor_message(monitor)
        if event["event"] & wanted:
            return event
    raise AssertionError(f"no handshake event in {wanted:#x} within {EVENT_TIMEOUT_MS} ms")


def foreign_keys(keys: Path, tmp_path: Path) -> Path:
    """A worker-machine key directory with the right server key but a keypair not in authorized/."""
    directory = tmp_path / "foreign"
    (directory / security.WORKERS_DIR).mkdir(parents=True)
    shutil.copy(keys / "server.key", directory / "server.key")
    zmq.auth.create_certificates(directory / security.WORKERS_DIR, security.DEFAULT_WORKER)
    return directory


def worker_machine(keys: Path, tmp_path: Path, name: str = security.DEFAULT_WORKER) -> Path:
    """Copy only what the report says a worker machine needs."""
    directory = tmp_path / f"worker-{name}"
    (directory / security.WORKERS_DIR).mkdir(parents=True)
    shutil.copy(keys / "server.key", directory / "server.key")
    shutil.copy(keys / "workers" / f"{name}.key_secret", directory / "workers" / f"{name}.key_secret")
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- key files ---------------------------------------------------------------------------


def test_generate_keys_layout_and_permissions(keys):
    assert sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*")) == [
        "authorized", "authorized/worker.key", "server.key", "server.key_secret",
        "workers", "workers/worker.key", "workers/worker.key_secret"]
    assert mode(keys / "server.key_secret") == mode(keys / "workers/worker.key_secret") == 0o600
    worker_public, worker_secret = zmq.auth.load_certificate(keys / "workers/worker.key_secret")
    assert worker_secret and zmq.auth.load_certificate(keys / "authorized/worker.key") == (worker_public, None)


def test_generate_keys_refuses_to_overwrite(keys):
    before = (keys / "server.key_secret").read_bytes()
    with pytest.raises(FileExistsError):
        security.generate_keys(keys)
    assert (keys / "server.key_secret").read_bytes() == before


def test_add_worker_key_authorizes_it(keys):
    security.add_worker_key(keys, "gpu-1")
    assert mode(keys / "workers/gpu-1.key_secret") == 0o600
    assert (keys / "authorized/gpu-1.key").read_bytes() == (keys / "workers/gpu-1.key").read_bytes()
    with pytest.raises(FileExistsError):
        security.add_worker_key(keys, "gpu-1")


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden"])
def test_add_worker_key_rejects_path_like_names(keys, name):
    with pytest.raises(ValueError):
        security.add_worker_key(keys, name)


def test_add_worker_key_needs_generated_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate"):
        security.add_worker_key(tmp_path, "w")


def test_secure_client_names_the_missing_file(tmp_path, zmq_sockets):
    with pytest.raises(FileNotFoundError, match="worker.key_secret"):
        security.secure_client(zmq_sockets(zmq.DEALER), tmp_path)


def test_securing_after_bind_is_refused(keys, zmq_sockets):
    router = zmq_sockets(zmq.ROUTER, "server")
    router.bind_to_random_port("tcp://127.0.0.1")
    with pytest.raises(RuntimeError, match="before bind"):
        security.secure_server(router, keys)


# --- CURVE on the wire -------------------------------------------------------------------


@pytest.mark.parametrize("name", [security.DEFAULT_WORKER, "second"])
def test_authorized_worker_exchanges_messages(keys, tmp_path, zmq_sockets, name):
    if name != security.DEFAULT_WORKER:
        security.add_worker_key(keys, name)
    router = zmq_sockets(zmq.ROUTER, "server")
    zmq_sockets.authenticators.append(security.secure_server(router, keys))  # reads authorized/ now
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = zmq_sockets(zmq.DEALER)
    security.secure_client(dealer, worker_machine(keys, tmp_path, name), worker_name=name)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    dealer.send(b"READY")
    assert router.poll(EVENT_TIMEOUT_MS), "authorized worker's message did not arrive"
    identity, body = router.recv_multipart()
    router.send_multipart([identity, b"TASK"])
    assert body == b"READY" and dealer.poll(EVENT_TIMEOUT_MS) and dealer.recv() == b"TASK"


def test_unauthorized_key_is_refused(server, keys, tmp_path, zmq_sockets):
    router, endpoint, monitor = server
    dealer = zmq_sockets(zmq.DEALER)
    security.secure_client(dealer, foreign_keys(keys, tmp_path))
    dealer.connect(endpoint)
    dealer.send(b"READY")
    wait_for_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert not router.poll(REJECT_POLL_MS)


def test_plain_client_is_refused(server, zmq_sockets):
    router, endpoint, monitor = server
    dealer = zmq_sockets(zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send(b"READY")
    wait_for_event(monitor, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert not router.poll(REJECT_POLL_MS)


# --- command line ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.security", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=20)


def test_cli_generate_and_add_worker(tmp_path):
    keys = tmp_path / "keys"
    done = run_cli("generate", str(keys))
    assert done.returncode == 0, done.stderr
    assert str(keys / "server.key") in done.stdout and "workers/worker.key_secret" in done.stdout
    assert mode(keys / "server.key_secret") == 0o600

    done = run_cli("add-worker", str(keys), "edge")
    assert done.returncode == 0, done.stderr
    assert "workers/edge.key_secret" in done.stdout and (keys / "authorized/edge.key").is_file()

    again = run_cli("generate", str(keys))
    assert again.returncode == 1 and "already exists" in again.stderr
