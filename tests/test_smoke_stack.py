import requests

from tests import fixtures_functions as ff
from workers.serialization import deserialize, serialize


def test_local_stack_runs_a_task(stack):
    url = stack.web()
    stack.dispatcher("local", "-w", "2")
    fid = requests.post(url + "/register_function", json={"name": "add", "payload": serialize(ff.add)}).json()["function_id"]
    tid = requests.post(url + "/execute_function", json={"function_id": fid, "payload": serialize(((2, 3), {}))}).json()["task_id"]
    body = requests.get(url + f"/result/{tid}?wait=20").json()
    assert body["status"] == "COMPLETED", stack.logs()
    assert deserialize(body["result"]) == 5
