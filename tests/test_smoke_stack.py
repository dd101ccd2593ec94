import pytest
import requests

from tests import fixtures_functions as ff
from tests.stack import endpoint_of
from workers.serialization import deserialize, serialize


@pytest.mark.parametrize("mode", ["local", "pull", "push"])
def test_stack_runs_a_task(stack, mode):
    url = stack.web()
    dispatcher = stack.dispatcher(mode, "-w", "2")
    if mode != "local":
        stack.worker(mode, 2, endpoint_of(dispatcher))
    fid = requests.post(url + "/register_function", json={"name": "add", "payload": serialize(ff.add)}).json()["function_id"]
    tids = [requests.post(url + "/execute_function", json={"function_id": fid, "payload": serialize(((2, i), {}))}).json()["task_id"] for i in range(20)]
    for i, tid in enumerate(tids):
        body = requests.get(url + f"/result/{tid}?wait=20").json()
        assert body["status"] == "COMPLETED", stack.logs()
        assert deserialize(body["result"]) == 2 + i
