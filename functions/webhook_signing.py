"""Webhook signatures, Stripe style: `FaaS-Signature: t=<unix seconds>,v1=<hex>` where the hex
is HMAC-SHA256(secret, "<t>.<raw body>").

Signing the timestamp with the body lets a receiver refuse replays of an old delivery (the
tolerance window), and comparing in constant time keeps the secret from leaking through
timing. Django-free, so a receiver can import it with the client alone.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "FaaS-Signature"
TOLERANCE_SECONDS = 300  # how old a delivery's timestamp may be when the receiver checks it


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale, or does not match the body."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def header_value(secret: str, body: bytes, now: float | None = None) -> str:
    """The `FaaS-Signature` header for `body`, signed at `now`."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str | None, body: bytes, *, now: float | None = None,
           tolerance: float = TOLERANCE_SECONDS) -> int:
    """Check a delivery; returns its timestamp, or raises SignatureError saying why not."""
    if not header:
        raise SignatureError(f"no {HEADER} header")
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        raise SignatureError(f"{HEADER} has no t=<unix seconds>") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise SignatureError(f"the timestamp is more than {tolerance:g} s away: a replayed or delayed delivery")
    if not hmac.compare_digest(signature(secret, timestamp, body), parts.get("v1", "")):
        raise SignatureError("the signature does not match the body")
    return timestamp
