"""The one implementation of payload encoding: base64 text of dill bytes.

`validate_payload` checks a client payload without unpickling it, so the web
server and the dispatcher never run user code.
"""

import base64
import binascii
import io
import pickletools

import dill

from workers.exceptions import PayloadError, PayloadTooLarge

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # cap on a decoded payload or result


def dumps(obj) -> bytes:
    """dill bytes of `obj`; functions from `__main__` travel by value."""
    return dill.dumps(obj)


def loads(data: bytes):
    return dill.loads(data)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode(text: str) -> bytes:
    """Decode base64 text, tolerating the newlines `codecs.encode(..., "base64")` inserts."""
    if not isinstance(text, str):
        raise PayloadError("The payload must be a base64 string.")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"The payload is not valid base64 ({exc}).") from None


def serialize(obj) -> str:
    """base64 text of `dill.dumps(obj)`: the form every REST payload and result takes."""
    return encode(dumps(obj))


def deserialize(text: str):
    return loads(decode(text))


def check_pickle(data: bytes) -> None:
    """Accept exactly one complete pickle stream; never unpickles."""
    if not data:
        raise PayloadError("The payload is empty.")
    stream = io.BytesIO(data)
    try:
        for opcode, _arg, _pos in pickletools.genops(stream):
            if opcode.name == "STOP":
                break
        else:  # pragma: no cover - genops raises before running out without STOP
            raise PayloadError("The payload is not a pickle stream (no STOP opcode).")
    except PayloadError:
        raise
    except Exception as exc:  # genops raises ValueError and others on junk
        raise PayloadError(f"The payload is not a pickle stream ({exc}).") from None
    if stream.tell() != len(data):
        raise PayloadError(f"The payload has {len(data) - stream.tell()} bytes after the end of the pickle stream.")


def validate_payload(text: str, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Decode and check a client payload; return the dill bytes. Raises PayloadError/PayloadTooLarge."""
    if isinstance(text, str) and len(text) > (max_bytes * 4) // 3 + len(text) // 60 + 16:
        raise PayloadTooLarge(f"The payload is larger than the limit of {max_bytes} bytes.")
    data = decode(text)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The payload is {len(data)} bytes, over the limit of {max_bytes} bytes.")
    check_pickle(data)
    return data
