"""The wire protocol between dispatcher and workers: kinds, messages, framing, heartbeat constants.

Every message is `[VERSION, kind, header-json, *blobs]`; payloads and results ride as
raw bytes frames (never base64 text), and several tasks or results share one message.
Both sides import this module and nothing else defines a frame. Standard library only.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from workers.exceptions import ProtocolError

VERSION = b"FAAS1"

HEARTBEAT_INTERVAL = 1.0  # seconds between heartbeats, both ways
HEARTBEAT_LIVENESS = 3  # missed beats before a peer is declared dead
RECONNECT_INTERVAL_INIT = 0.5  # first back-off before a worker reconnects, seconds
RECONNECT_INTERVAL_MAX = 8.0  # back-off ceiling, seconds
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ZeroMQ MAXMSGSIZE: several payloads near the 16 MiB cap
# A worker's goodbye after it finished and reported everything it held: whatever the
# dispatcher still counts as sent to it never reached it.
CLEAN_GOODBYE = "worker stopping, holding nothing"


class TaskStatus(str, enum.Enum):
    """The status vocabulary; equals functions.models.Task.Status (a unit test checks)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED.value, TaskStatus.FAILED.value})


class Kind(bytes, enum.Enum):
    REGISTER = b"REGISTER"  # push worker -> dispatcher: I exist, with n processes
    REQUEST = b"REQUEST"  # pull worker -> dispatcher: give me up to n tasks
    TASKS = b"TASKS"  # dispatcher -> worker: one or more tasks
    RESULTS = b"RESULTS"  # worker -> dispatcher: one or more results
    CANCEL = b"CANCEL"  # dispatcher -> worker: stop these tasks' processes
    PROGRESS = b"PROGRESS"  # worker -> dispatcher: how far running tasks have got
    HEARTBEAT = b"HEARTBEAT"  # both ways
    DISCONNECT = b"DISCONNECT"  # both ways: I am going away


@dataclass(frozen=True)
class WorkerInfo:
    """Who a worker is; sent with REGISTER and REQUEST so the dispatcher can list it."""

    processes: int
    hostname: str = ""
    pid: int = 0
    holding: tuple[str, ...] = ()  # tasks it is already running or holding (after a reconnect)
    python: str = ""  # its environment (workers.environment.describe), so the dispatcher sends it
    dill: str = ""  # only tasks whose modules it can import
    modules: tuple[str, ...] | None = None  # None: not reported (an older worker): assumed able

    @property
    def busy(self) -> int:
        return len(self.holding)


@dataclass(frozen=True)
class Task:
    task_id: str
    function_id: str
    function: bytes  # dill bytes, opaque to the dispatcher
    arguments: bytes  # dill bytes of ((args...), {kwargs})
    deadline_s: float | None = None
    soft_deadline_s: float | None = None  # seconds before SoftTimeLimitExceeded is raised in the function
    retry_on: tuple[str, ...] = ()  # exception class names that make a failure retryable (its retry policy)
    memory_bytes: int | None = None  # resource limits of the call (workers.limits); None: none
    cpu_seconds: int | None = None


@dataclass(frozen=True)
class Result:
    """A finished task: the one record of it that worker, dispatcher, store and web share."""

    task_id: str
    status: str  # one of FINAL_STATUSES
    result: bytes  # dill bytes of the return value, or of the exception
    error: str = ""  # plain-text reason for a failure
    started_at: float | None = None  # wall clock, seconds
    finished_at: float | None = None
    retry: bool = False  # the worker says this failure may be retried (its process died under it)
    output: str = ""  # what the function printed or logged: the tail, capped in the pool child


@dataclass(frozen=True)
class Register:
    info: WorkerInfo


@dataclass(frozen=True)
class Request:
    free: int
    info: WorkerInfo


@dataclass(frozen=True)
class Tasks:
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Results:
    results: tuple[Result, ...]
    free: int = 0  # processes free after these results; lets a pull worker ask again in one message


@dataclass(frozen=True)
class Progress:
    updates: tuple[tuple[str, float, str], ...]  # (task id, fraction 0..1, message)


@dataclass(frozen=True)
class Cancel:
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class Heartbeat:
    busy: int = 0


@dataclass(frozen=True)
class Disconnect:
    reason: str = ""


Message = Register | Request | Tasks | Results | Cancel | Heartbeat | Disconnect | Progress


def _header(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode(msg: Message) -> list[bytes]:
    """Frames for one message (without any ROUTER identity)."""
    match msg:
        case Register(info):
            return [VERSION, Kind.REGISTER.value, _header(_info_fields(info))]
        case Request(free, info):
            return [VERSION, Kind.REQUEST.value, _header({"free": free, **_info_fields(info)})]
        case Tasks(tasks):
            head = [[t.task_id, t.function_id, t.deadline_s, *_task_options(t)] for t in tasks]
            blobs = [b for t in tasks for b in (t.function, t.arguments)]
            return [VERSION, Kind.TASKS.value, _header(head), *blobs]
        case Results(results, free):
            head = {"free": free, "r": [[r.task_id, r.status, r.error, r.started_at, r.finished_at, r.retry]
                                     for r in results]}
            if any(r.output for r in results):  # by position, only where there is some: most tasks print nothing
                head["o"] = {str(i): r.output for i, r in enumerate(results) if r.output}
            return [VERSION, Kind.RESULTS.value, _header(head), *(r.result for r in results)]
        case Cancel(task_ids):
            return [VERSION, Kind.CANCEL.value, _header(list(task_ids))]
        case Progress(updates):
            return [VERSION, Kind.PROGRESS.value, _header([list(u) for u in updates])]
        case Heartbeat(busy):
            return [VERSION, Kind.HEARTBEAT.value, _header({"busy": busy})]
        case Disconnect(reason):
            return [VERSION, Kind.DISCONNECT.value, _header({"reason": reason})]
    raise ProtocolError(f"cannot encode {type(msg).__name__}")


def _task_options(t: Task) -> list:
    """The optional tail of a task's header row (soft deadline, retry_on, memory, cpu): only as
    long as it needs to be."""
    tail = [t.soft_deadline_s, list(t.retry_on), t.memory_bytes, t.cpu_seconds]
    while tail and not tail[-1]:
        tail.pop()
    return tail


def _info_fields(info: WorkerInfo) -> dict:
    fields = {"processes": info.processes, "hostname": info.hostname, "pid": info.pid, "holding": list(info.holding)}
    if info.modules is not None:
        fields.update(python=info.python, dill=info.dill, modules=list(info.modules))
    return fields


def _info(head: dict) -> WorkerInfo:
    modules = head.get("modules")
    return WorkerInfo(processes=int(head["processes"]), hostname=str(head.get("hostname", "")),
                      pid=int(head.get("pid", 0)), holding=tuple(str(t) for t in head.get("holding", ())),
                      python=str(head.get("python", "")), dill=str(head.get("dill", "")),
                      modules=None if modules is None else tuple(str(m) for m in modules))


def decode(frames: list[bytes]) -> Message:
    """Parse frames produced by `encode`; raises ProtocolError on anything malformed."""
    if len(frames) < 3:
        raise ProtocolError(f"expected at least 3 frames, got {len(frames)}")
    version, kind_raw, header, *blobs = frames
    if bytes(version) != VERSION:
        raise ProtocolError(f"unsupported protocol version {bytes(version)[:16]!r}")
    try:
        kind = Kind(bytes(kind_raw))
        head = json.loads(bytes(header))
        return _DECODERS[kind](head, [bytes(b) for b in blobs])
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ProtocolError(f"malformed {bytes(kind_raw)[:16]!r} message: {exc}") from None


def _decode_tasks(head, blobs) -> Tasks:
    if len(blobs) != 2 * len(head):
        raise ProtocolError(f"TASKS header names {len(head)} tasks but {len(blobs)} blobs follow")
    return Tasks(tuple(
        Task(str(tid), str(fid), blobs[2 * i], blobs[2 * i + 1], None if dl is None else float(dl),
             float(rest[0]) if rest and rest[0] is not None else None,
             tuple(str(n) for n in rest[1]) if len(rest) > 1 and rest[1] else (),
             *(None if v is None else int(v) for v in (rest[2:4] + [None, None])[:2]))
        for i, (tid, fid, dl, *rest) in enumerate(head)  # the optional tail is absent from older dispatchers
    ))


def _decode_results(head, blobs) -> Results:
    rows = head["r"]
    if len(blobs) != len(rows):
        raise ProtocolError(f"RESULTS header names {len(rows)} results but {len(blobs)} blobs follow")
    results, outputs = [], head.get("o") or {}
    for i, ((tid, status, error, started, finished, *rest), blob) in enumerate(zip(rows, blobs)):
        if status not in FINAL_STATUSES:
            raise ProtocolError(f"result for {str(tid)[:64]} has status {str(status)[:16]!r}, not a final one")
        results.append(Result(str(tid), str(status), blob, str(error or ""), _time(started), _time(finished),
                              bool(rest and rest[0]), str(outputs.get(str(i), ""))))
    return Results(tuple(results), free=int(head.get("free", 0)))


def _time(value) -> float | None:
    return None if value is None else float(value)


_DECODERS = {
    Kind.REGISTER: lambda head, blobs: Register(_info(head)),
    Kind.REQUEST: lambda head, blobs: Request(int(head["free"]), _info(head)),
    Kind.TASKS: _decode_tasks,
    Kind.RESULTS: _decode_results,
    Kind.CANCEL: lambda head, blobs: Cancel(tuple(str(t) for t in head)),
    Kind.PROGRESS: lambda head, blobs: Progress(tuple((str(t), float(f), str(m)) for t, f, m in head)),
    Kind.HEARTBEAT: lambda head, blobs: Heartbeat(int(head.get("busy", 0))),
    Kind.DISCONNECT: lambda head, blobs: Disconnect(str(head.get("reason", ""))),
}
