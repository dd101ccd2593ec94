"""A lean keep-alive HTTP/1.1 client for the load generators and the HTTP floor.

One `Connection` per thread, over `http.client`: it costs the client a fraction of what
`requests` does per call, so on a 2-core machine the load generator takes less CPU away
from the server it measures. The latency test uses the real SDK (functions.client).
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class Connection:
    """One persistent connection to the web server; not thread-safe (one per thread)."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; a connection the server closed while idle is reopened once."""
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=JSON_HEADERS if body is not None else
                                  {"Accept": "application/json"})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, payload=None) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self.request(method, path, body)
        try:
            return status, json.loads(data) if data else {}
        except ValueError:
            return status, {"raw": data[:200].decode(errors="replace")}

    def close(self) -> None:
        self.conn.close()
