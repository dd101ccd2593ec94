"""Every malformed request body gets a JSON 4xx over real HTTP, whatever its shape (issue 12, item 3)."""

from __future__ import annotations

import pytest
import requests

UUID = "00000000-0000-0000-0000-000000000000"
POST_ENDPOINTS = ["/register_function", "/execute_function", "/execute_batch", f"/cancel/{UUID}"]
BODY_ENDPOINTS = POST_ENDPOINTS[:3]  # cancel reads no body: any body still gets a JSON 4xx
JSON = "application/json"
OVER_THE_CAP = 1_000_000  # bytes; FAAS_MAX_PAYLOAD_BYTES=200000 below makes the body limit about 340 KB


def _multipart(size: int) -> tuple[bytes, str]:
    body = (b"--b\r\nContent-Disposition: form-data; name=\"payload\"; filename=\"p\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * size + b"\r\n--b--\r\n")
    return body, "multipart/form-data; boundary=b"


# name -> (body, content type, expected status or None for "any 4xx")
CASES = {
    "arrays nested 50000 deep": (b"[" * 50000 + b"]" * 50000, JSON, 400),
    "objects nested 50000 deep": (b'{"a":' * 50000 + b"1" + b"}" * 50000, JSON, 400),
    "a field nested 900 deep": (b'{"name": ' + b"[" * 900 + b"]" * 900 + b', "payload": "gAQu"}', JSON, 400),
    "latin-1 bytes sent as UTF-8 JSON": ('{"name": "caf\u00e9"}'.encode("latin-1"), JSON, 400),
    "an unknown charset": (b"{}", JSON + "; charset=no-such-codec", 400),
    "UTF-16 JSON": ('{"name": "x"}'.encode("utf-16"), JSON + "; charset=utf-16", 400),
    "invalid UTF-8 in a form": (b"name=\xff\xfe&payload=%ff", "application/x-www-form-urlencoded", 400),
    "XML": (b"<name>x</name>", "application/xml", 415),
    "plain text": (b"hello", "text/plain", 415),
    "a made-up media type": (b"{}", "application/x-nonsense", 415),
    "no content type": (b'{"name": "x"}', "", None),
    "truncated JSON": (b'{"name": "x", "payload": ', JSON, 400),
    "a JSON list": (b"[1, 2, 3]", JSON, 400),
    "a JSON string": (b'"x"', JSON, 400),
    "JSON null": (b"null", JSON, 400),
    "NaN": (b'{"name": NaN, "payload": "gAQu"}', JSON, 400),
    "an integer of 5000 digits": (b'{"name": ' + b"9" * 5000 + b"}", JSON, 400),
    "NUL and lone surrogates": (b'{"name": "\\u0000\\ud800", "payload": "\\ud800", "payloads": ["\\ud800"]}',
                                JSON, 400),
    "JSON over the size limit": (b'{"name": "' + b"x" * OVER_THE_CAP + b'"}', JSON, 413),
    "a form over the size limit": (b"name=" + b"x" * OVER_THE_CAP, "application/x-www-form-urlencoded", 413),
    "a multipart file over the size limit": (*_multipart(OVER_THE_CAP), 413),
    "multipart without a boundary": (b"garbage", "multipart/form-data", 400),
    "multipart garbage": (b"garbage", "multipart/form-data; boundary=b", 400),
}


@pytest.fixture
def url(stack):
    stack.extra_env["FAAS_MAX_PAYLOAD_BYTES"] = "200000"
    return stack.web()


def _post(url: str, path: str, body: bytes, content_type: str) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    if not content_type:  # requests adds none for bytes; make sure no default sneaks in
        headers["Content-Type"] = ""
    return requests.post(url + path, data=body, headers=headers, timeout=30)


def test_every_malformed_body_gets_a_json_4xx_from_every_post_endpoint(url):
    failures = []
    for path in POST_ENDPOINTS:
        for name, (body, content_type, expected) in CASES.items():
            response = _post(url, path, body, content_type)
            wanted = expected if path in BODY_ENDPOINTS else None
            ok = (400 <= response.status_code < 500 and (wanted is None or response.status_code == wanted)
                  and response.headers.get("Content-Type", "").startswith("application/json"))
            if ok:
                try:
                    ok = bool(response.json())
                except ValueError:
                    ok = False
            if not ok:
                failures.append(f"{path} {name}: {response.status_code} {response.text[:120]!r}")
    assert not failures, "\n".join(failures)


def test_deep_nesting_is_a_400_that_says_so_and_the_server_keeps_serving(url):
    response = _post(url, "/register_function", b"[" * 50000 + b"]" * 50000, JSON)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]
    assert requests.get(f"{url}/status/{UUID}", timeout=10).status_code == 404  # still answering
