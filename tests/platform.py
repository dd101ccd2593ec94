"""What end-to-end tests drive: the API as a test uses it, and a started platform."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from tests.stack import Proc, Stack, endpoint_of
from workers.serialization import deserialize, serialize

MODES = ["local", "pull", "push"]


class Api:
    """The four endpoints, as a test uses them."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def register(self, fn) -> str:
        response = self.http.post(self.url + "/register_function", json={"name": getattr(fn, "__name__", "f"),
                                                                          "payload": serialize(fn)})
        assert response.status_code == 201, response.text
        return response.json()["function_id"]

    def submit(self, function_id: str, *args, timeout: float | None = None, **kwargs) -> str:
        body = {"function_id": function_id, "payload": serialize((args, kwargs))}
        if timeout is not None:
            body["timeout"] = timeout
        response = self.http.post(self.url + "/execute_function", json=body)
        assert response.status_code == 201, response.text
        return response.json()["task_id"]

    def status(self, task_id: str) -> str:
        return self.http.get(f"{self.url}/status/{task_id}").json()["status"]

    def result(self, task_id: str, wait: float = 30.0) -> dict:
        """The final JSON of a task, waiting with the long-poll; fails if it never finishes."""
        deadline = time.monotonic() + wait
        while True:
            body = self.http.get(f"{self.url}/result/{task_id}", params={"wait": min(10, wait)}).json()
            if body["status"] in ("COMPLETED", "FAILED") or time.monotonic() > deadline:
                assert body["status"] in ("COMPLETED", "FAILED"), f"task {task_id} still {body['status']}"
                return body

    def value(self, task_id: str, wait: float = 30.0):
        body = self.result(task_id, wait)
        assert body["status"] == "COMPLETED", body.get("error")
        return deserialize(body["result"])

    def failure(self, task_id: str, wait: float = 30.0) -> BaseException:
        body = self.result(task_id, wait)
        assert body["status"] == "FAILED", body
        assert body["error"]
        return deserialize(body["result"])


@dataclass
class Platform:
    stack: Stack
    mode: str
    api: Api
    dispatcher: Proc
    workers: list[Proc] = field(default_factory=list)

    def add_worker(self, processes: int = 2, *args: str) -> Proc:
        worker = self.stack.worker(self.mode, processes, endpoint_of(self.dispatcher), *args)
        self.workers.append(worker)
        return worker


def start_platform(stack: Stack, mode: str, processes: int = 2, *dispatcher_args: str) -> Platform:
    url = stack.web()
    dispatcher = stack.dispatcher(mode, "-w", str(processes), *dispatcher_args)
    platform = Platform(stack, mode, Api(url), dispatcher)
    if mode != "local":
        platform.add_worker(processes)
    return platform


