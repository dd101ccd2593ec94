"""What a task's function writes to stdout, stderr and `logging`, kept per task in the pool
child and returned with its result.

Only the tail is kept (OUTPUT_CAP bytes, with a note saying how much was cut), in a list
of chunks compacted now and then, so a function that prints megabytes costs the child
about twice the cap in memory and a few appends per write, never a growing string. A
function that prints nothing costs four attribute swaps per task.

Captured at the Python level (sys.stdout, sys.stderr, the root logger): what C code or a
subprocess writes straight to file descriptors 1 and 2 goes to the worker's own output.
Standard library only.
"""

from __future__ import annotations

import io
import logging
import sys

OUTPUT_CAP = 64 * 1024  # bytes of a task's output kept: the last ones
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _Tail:
    """The last `cap` characters written (at most; trimmed to bytes at the end)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.chunks: list[str] = []
        self.size = 0  # characters held in chunks
        self.dropped = 0  # characters written and no longer held

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)
        if self.size > 2 * self.cap:
            joined = "".join(self.chunks)
            self.dropped += len(joined) - self.cap
            self.chunks, self.size = [joined[-self.cap:]], self.cap

    def reset(self) -> None:
        self.chunks, self.size, self.dropped = [], 0, 0

    def text(self) -> str:
        if not self.chunks:
            return ""
        data = "".join(self.chunks).encode("utf-8", "replace")
        dropped = self.dropped
        if len(data) > self.cap:
            dropped += len(data[:-self.cap].decode("utf-8", "ignore"))
            data = data[-self.cap:]
        body = data.decode("utf-8", "ignore")
        if dropped:
            return f"[output cut: {dropped} characters dropped, the last {len(data)} bytes follow]\n{body}"
        return body


class _Stream(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr while a task runs."""

    def __init__(self, tail: _Tail, name: str):
        self._tail = tail
        self._name = name
        self.buffer = _BinaryStream(tail)  # code that writes bytes to sys.stdout.buffer

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._tail.add(text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def name(self) -> str:
        return self._name


class _BinaryStream(io.RawIOBase):
    def __init__(self, tail: _Tail):
        self._tail = tail

    def write(self, data) -> int:
        self._tail.add(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def writable(self) -> bool:
        return True


class _Handler(logging.Handler):
    def __init__(self, tail: _Tail):
        super().__init__()
        self._tail = tail
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._tail.add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class OutputCapture:
    """One per child, reused for each task: `with capture: run()`, then `capture.text()`.

    `install_logging()` once per child sends the root logger's records (INFO and up) to
    the capture instead of the child's stderr; a function may change the level itself."""

    def __init__(self, cap: int = OUTPUT_CAP):
        self._tail = _Tail(cap)
        self._stdout = _Stream(self._tail, "<stdout>")
        self._stderr = _Stream(self._tail, "<stderr>")
        self._saved = None

    def install_logging(self, level: int = logging.INFO) -> None:
        root = logging.getLogger()
        root.addHandler(_Handler(self._tail))
        root.setLevel(level)

    def __enter__(self) -> OutputCapture:
        self._tail.reset()
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._stdout, self._stderr
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stdout, sys.stderr = self._saved
        self._saved = None

    def text(self) -> str:
        return self._tail.text()
