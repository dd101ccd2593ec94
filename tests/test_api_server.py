"""API behaviour that depends on how the server was started: throttling, DEBUG on."""

from __future__ import annotations

import requests

from workers.serialization import serialize


def test_throttling_answers_429_json_when_a_rate_is_set(stack):
    stack.extra_env["FAAS_THROTTLE_ANON"] = "10/min"
    url = stack.web()  # its readiness probe spends some of the ten
    responses = [requests.get(f"{url}/status/00000000-0000-0000-0000-000000000000") for _ in range(11)]
    codes = [r.status_code for r in responses]
    first_429 = codes.index(429)
    assert set(codes[:first_429]) <= {404} and set(codes[first_429:]) == {429}, codes
    assert "throttled" in responses[-1].json()["detail"].lower()


def test_bad_input_is_json_with_debug_on(stack):
    stack.extra_env["DJANGO_DEBUG"] = "1"
    url = stack.web()
    cases = [
        requests.post(url + "/register_function", data="{nope", headers={"Content-Type": "application/json"}),
        requests.post(url + "/register_function", json={"name": "x", "payload": "@@@"}),
        requests.post(url + "/execute_function", json={"function_id": "bad", "payload": serialize(((), {}))}),
        requests.get(url + "/status/not-an-id"),
        requests.get(url + "/result/not-an-id"),
        requests.get(url + "/result/00000000-0000-0000-0000-000000000000?wait=abc"),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text[:200]
        assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
        assert response.json()
