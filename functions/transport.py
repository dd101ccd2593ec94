"""The SDK's HTTP: JSON requests over one thread-safe urllib3 keep-alive pool.

urllib3 rather than requests: requests re-reads the proxy and .netrc settings from the
environment on every call, which cost the client more CPU per request than the server
spends answering a /status. Here the proxy is read from the environment once, when the
client is made. Only idempotent requests are retried, and only when the connection broke
before an answer: a POST is never sent twice.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

try:  # orjson encodes and parses several times faster; the client works without it
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads


class ClientError(Exception):
    """Raised for a problem in talking to the platform, as opposed to a failure of the function."""


class TransportError(ClientError, ConnectionError):
    """No answer from the server: connection refused or reset, DNS failure, or timed out."""


class _RetryBrokenConnections(urllib3.Retry):
    """Ask again when a connection broke before the answer (a keep-alive connection the
    server had just closed), never after a timeout: the server may still be working on it."""

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, *args, **kwargs)


# urllib3 retries reads only for idempotent methods, so a POST is never sent twice.
RETRIES = _RetryBrokenConnections(total=2, connect=2, read=1, redirect=0, status=0, other=0, raise_on_status=False)


class Transport:
    """`request(method, path, ...)` → (status, parsed JSON body or None), to one base URL."""

    def __init__(self, base_url: str, headers: dict[str, str], *, connections: int):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// address, not {base_url!r}")
        self.headers = {"Accept": "application/json", **headers}
        proxy = _proxy_for(parts.scheme, parts.hostname)
        options = {"num_pools": 4, "maxsize": connections, "block": False}
        self.pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)

    def request(self, method: str, path: str, *, params: dict | None = None, json_body=None,
                timeout: float) -> tuple[int, object, str]:
        """Send one request; returns (status, JSON body or None, raw text when it is not JSON)."""
        url = self.base_url + path + (("&" if "?" in path else "?") + urlencode(params) if params else "")
        headers, body = self.headers, None
        if json_body is not None:
            body = _dumps(json_body)
            headers = {**headers, "Content-Type": "application/json"}
        try:
            response = self.pool.request(method, url, body=body, headers=headers, retries=RETRIES, redirect=False,
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))
        except Urllib3Error as exc:
            raise TransportError(f"{method} {url}: {_reason(exc)}") from exc
        data = response.data
        try:
            return response.status, (_loads(data) if data else None), ""
        except ValueError:
            return response.status, None, data[:500].decode(errors="replace") or (response.reason or "")

    def close(self) -> None:
        self.pool.clear()


def _proxy_for(scheme: str, host: str) -> str | None:
    """The HTTP(S)_PROXY that applies to `host`, honouring NO_PROXY, as requests would."""
    proxy = urllib.request.getproxies_environment().get(scheme)
    if not proxy or urllib.request.proxy_bypass_environment(host):
        return None
    return proxy


def _reason(exc: Urllib3Error) -> str:
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last error
    return f"{type(reason).__name__}: {reason}"
