"""`make run`'s launcher: it starts the whole platform, serves a task, and Ctrl-C leaves
no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

from scripts.redis_server import free_port
from scripts.stack import REPO
from scripts.waiting import wait_until
from tests import fixtures_functions as ff
from workers.serialization import deserialize, serialize


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children of children included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_starts_everything_and_ctrl_c_stops_everything(redis_server, tmp_path):
    web_port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "FAAS_WEB_PORT": str(web_port),
           "FAAS_DISPATCHER_PORT": str(free_port()), "FAAS_WORKER_PROCESSES": "2", "FAAS_VAR_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "run.log", "w+")
    launcher = subprocess.Popen([sys.executable, "-m", "scripts.run_platform"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Press Ctrl-C" in (tmp_path / "run.log").read_text(), timeout=90,
                   message="the platform did not start")
        banner = (tmp_path / "run.log").read_text()
        assert f"http://127.0.0.1:{web_port}/docs" in banner and "password:" in banner
        assert (tmp_path / "dev-credentials.txt").stat().st_mode & 0o077 == 0
        base = f"http://127.0.0.1:{web_port}"
        fid = requests.post(base + "/register_function", json={"name": "add", "payload": serialize(ff.add)}).json()
        tid = requests.post(base + "/execute_function", json={"function_id": fid["function_id"],
                                                              "payload": serialize(((40, 2), {}))}).json()
        assert deserialize(requests.get(f"{base}/result/{tid['task_id']}?wait=30").json()["result"]) == 42
        started = descendants(launcher.pid)
        assert len(started) >= 5  # web, dispatcher, worker and its processes
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        assert launcher.wait(60) == 0
        wait_until(lambda: not any(alive(p) for p in started), timeout=20,
                   message=f"left behind: {[p for p in started if alive(p)]}")
    finally:
        if launcher.poll() is None:  # a failed test: stop it the way Ctrl-C would, then make sure
            children = descendants(launcher.pid)
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait(10)
            for pid in children:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        log.close()
