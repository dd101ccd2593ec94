"""The process pool that the local dispatcher mode and both worker programs share.

N long-lived children each run one task at a time, so the parent always knows which
task each process holds. The parent enforces deadlines by killing the child's process
group, turns every death into a FAILED result naming the cause, and starts a
replacement. Not thread-safe: one loop owns a pool, and the thread that starts it must
outlive it (the kernel's parent-death signal follows the spawning thread). Children and
everything they start die with the pool's process, even by SIGKILL (see the end of this
module). Standard library and dill only.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import os
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from workers import execution, limits, progress
from workers.capture import OutputCapture
from workers.exceptions import ProtocolError, SoftTimeLimitExceeded, WorkerFailureException
from workers.protocol import Result, Task, TaskStatus
from workers.recycling import ChildLimits
from workers.serialization import DEFAULT_MAX_PAYLOAD_BYTES, dumps
from workers.softlimit import SoftLimit

log = logging.getLogger(__name__)

# spawn, not fork: the parent may hold Redis/ZeroMQ/database connections and threads
# (heartbeats, the Channels publisher); a forked child would share those sockets and could
# inherit locks held by other threads. A spawned child is a fresh interpreter and
# inherits none of it.
_CTX = multiprocessing.get_context("spawn")

BOOT_TIMEOUT = 30.0  # seconds a new child may take to report ready before it is killed
KILL_GRACE = 5.0  # seconds a SIGKILLed child may take to exit before it is given up on
PIPE_GRACE = 1.0  # seconds a child that closed its pipe may take to exit by itself before SIGKILL
REAP_TIMEOUT = 1.0  # seconds to wait for the exit status of a child seen exiting
RESTART_BACKOFF_MAX = 5.0  # ceiling on the delay between restarts of children that die while booting

# Parent <-> child frames. struct, not pickle, in the child-to-parent direction: the child
# runs user code, and the parent (the dispatcher, in local mode) must never unpickle
# anything that code could have written.
_TASK_HEAD = struct.Struct("!HHIIHQdQQ")  # lengths: task id, function id, function, arguments, retry-on names;
# result cap; soft limit; memory limit (bytes) and CPU limit (seconds), 0 for none
_RESULT_HEAD = struct.Struct("!c?ddII")  # status, retry, started_at, finished_at (NaN for None), error, output lengths
_READY = b"R"  # child -> parent, once, when it can take a task
_PROGRESS = b"P"  # child -> parent, any number while a task runs: then a double and the message
_PROGRESS_HEAD = struct.Struct("!cd")
_STATUS_BYTES = {TaskStatus.COMPLETED.value: b"C", TaskStatus.FAILED.value: b"F"}
_BYTES_STATUS = {v: k for k, v in _STATUS_BYTES.items()}


@dataclass(eq=False)
class Slot:
    """One child process and what it is doing."""

    process: BaseProcess
    conn: Connection  # duplex pipe to the child
    pid: int
    death_fd: int  # readable once the child has exited
    owns_death_fd: bool  # a pidfd we must close (the fallback, process.sentinel, is not ours)
    ready: bool = False  # the child reported it can take a task
    task_id: str | None = None
    started: float = 0.0  # monotonic, when the task (or the boot) began
    started_wall: float | None = None  # wall clock, for the FAILED result of a killed task
    deadline: float | None = None  # monotonic; task deadline, boot timeout or exit grace
    deadline_s: float | None = None
    cpu_seconds: int | None = None  # the task's CPU allowance: an EXIT_CPU exit means it was used up
    memory_bytes: int | None = None  # the task's memory allowance: running out of it retires the child
    lost: bool = False  # no longer talked to (pipe broke, or killed); waiting for the exit
    killed: bool = False  # SIGKILL sent
    kill_reason: str | None = None  # overrides the exit status in the failure message
    tasks_done: int = 0  # tasks this child has finished, for recycling
    recycled: str | None = None  # why this child is being replaced between tasks


class ProcessPool:
    """N spawned children, each running one task at a time; see the module docstring."""

    def __init__(self, size: int, *, max_result_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 limits: ChildLimits | None = None):
        if size < 1:
            raise ValueError("a pool needs at least one process")
        self._size = size
        self._max_result_bytes = max_result_bytes
        self._limits = limits if limits is not None and limits.any else None
        self._slots: list[Slot] = []
        self._by_task: dict[str, Slot] = {}
        self._by_fd: dict[int, tuple[Slot, bool]] = {}  # fd -> (slot, is the pipe)
        self._poller = select.poll()
        self._dying: list[BaseProcess] = []  # given up on after SIGKILL; reaped when they go
        self._progress: dict[str, tuple[float, str]] = {}  # task id -> latest report not yet taken
        self._restart_at = time.monotonic()  # a real time, so next_deadline() is never a falsy 0.0
        self._boot_failures = 0
        self._started = self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Start the children and wait until they are ready, so the first submit() finds them free."""
        if self._started:
            raise RuntimeError("the pool is already started")
        self._started = True
        atexit.register(self.close)  # runs before multiprocessing's own exit hook joins children
        for _ in range(self._size):
            self._spawn()
        end = time.monotonic() + timeout
        while self.free < self._size and (left := end - time.monotonic()) > 0:
            self.poll(min(left, 0.5))  # no task is submitted yet, so this only sees READY and deaths
        if self.free == 0:
            self.close()
            raise RuntimeError(f"no pool process became ready within {timeout:g} s")
        if self.free < self._size:
            log.warning("only %d of %d pool processes ready after %g s", self.free, self._size, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Kill every child's process group and join them. Tasks still held are dropped."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for slot in self._slots:
            _kill_group(slot.pid)
        end = time.monotonic() + timeout
        for process in [slot.process for slot in self._slots] + self._dying:
            process.join(max(0.0, end - time.monotonic()))
            if process.exitcode is None:
                log.error("pool process %s did not exit within %g s of SIGKILL", process.pid, timeout)
        for slot in list(self._slots):
            self._forget(slot)
        self._dying.clear()
        self._by_task.clear()

    def __enter__(self) -> ProcessPool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------

    @property
    def _running(self) -> bool:
        return self._started and not self._closed

    @property
    def size(self) -> int:
        return self._size

    @property
    def free(self) -> int:
        """Children that are alive, ready and idle: how many tasks submit() accepts now."""
        return sum(1 for s in self._slots if s.ready and s.task_id is None and not s.lost)

    @property
    def busy(self) -> int:
        return len(self._by_task)

    def take_progress(self) -> dict[str, tuple[float, str]]:
        """Progress reported by running tasks since the last call: task id -> (fraction, message)."""
        taken, self._progress = self._progress, {}
        return taken

    def holding(self) -> list[str]:
        """Ids of the tasks in flight, including those whose process is being killed."""
        return list(self._by_task)

    def pids(self) -> list[int]:
        return [slot.pid for slot in self._slots]

    def pid_of(self, task_id: str) -> int | None:
        slot = self._by_task.get(task_id)
        return slot.pid if slot else None

    def fds(self) -> list[int]:
        """Descriptors that become readable when collect() has work; they change whenever a
        child is replaced, so re-read them after each collect()."""
        return list(self._by_fd)

    def next_deadline(self) -> float | None:
        """The monotonic time by which collect() must run again, or None if nothing is timed."""
        times = [s.deadline for s in self._slots if s.deadline is not None]
        if len(self._slots) < self._size and self._running:
            times.append(self._restart_at)
        return min(times, default=None)

    # -- tasks -----------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Hand `task` to an idle child; raises RuntimeError when none is free.
        `task.deadline_s` of None means no deadline."""
        if not self._running:
            raise RuntimeError("the pool is not running")
        if task.task_id in self._by_task:
            raise ValueError(f"task {task.task_id} is already running in this pool")
        slot = next((s for s in self._slots if s.ready and s.task_id is None and not s.lost), None)
        if slot is None:
            raise RuntimeError("no free process in the pool")
        try:
            frame = _encode_task(task, self._max_result_bytes)
        except struct.error as exc:
            raise ValueError(f"task {task.task_id[:100]} does not fit a pool frame: {exc}") from None
        slot.task_id, slot.deadline_s = task.task_id, task.deadline_s
        slot.cpu_seconds, slot.memory_bytes = task.cpu_seconds, task.memory_bytes
        slot.started, slot.started_wall = time.monotonic(), time.time()
        slot.deadline = None if task.deadline_s is None else slot.started + task.deadline_s
        self._by_task[task.task_id] = slot
        try:
            slot.conn.send_bytes(frame)
        except OSError as exc:  # the child died while idle; collect() reports the task
            log.warning("pool process %d: sending task %s failed: %s", slot.pid, task.task_id, exc)
            self._lose(slot, PIPE_GRACE)

    def cancel(self, task_id: str) -> bool:
        """Kill the process running `task_id`; its FAILED result comes from a later collect()."""
        slot = self._by_task.get(task_id)
        if slot is None or slot.killed:
            return False
        log.info("pool process %d: cancelling task %s", slot.pid, task_id)
        self._kill(slot, "cancelled")
        return True

    def collect(self) -> list[Result]:
        """Without blocking: gather results, reap dead children, enforce deadlines, refill."""
        return self._collect(self._poller.poll(0))

    def poll(self, timeout: float) -> list[Result]:
        """Wait up to `timeout` seconds (less if a deadline falls sooner) for results, then collect."""
        due = self.next_deadline()
        if due is not None:
            timeout = min(timeout, due - time.monotonic())
        return self._collect(self._poller.poll(max(0, math.ceil(timeout * 1000))))

    # -- the parent's side of each child ---------------------------------------------

    def _collect(self, events: list[tuple[int, int]]) -> list[Result]:
        results: list[Result] = []
        if not self._running:
            return results
        pipes: list[Slot] = []
        exits: list[Slot] = []
        for fd, _ in events:
            if (entry := self._by_fd.get(fd)) is not None:
                (pipes if entry[1] else exits).append(entry[0])
        for slot in pipes:  # results before deaths: a child may have answered just before it died
            if not slot.lost:
                self._receive(slot, results)
        for slot in exits:
            while not slot.lost and slot.task_id is not None and slot.conn.poll(0):  # progress, then the result
                self._receive(slot, results)
            self._retire(slot, results)
        self._enforce_deadlines(time.monotonic(), results)
        self._refill()
        return results

    def _receive(self, slot: Slot, results: list[Result]) -> None:
        """Read the one message a child sends at a time: READY once, then one result per task."""
        try:
            frame = slot.conn.recv_bytes()
        except (EOFError, OSError):
            # The pipe closes a moment before the exit is visible: wait for the exit status,
            # which says why, rather than SIGKILL a child that is already on its way out.
            self._lose(slot, PIPE_GRACE)
            return
        if not slot.ready and frame == _READY:
            slot.ready, slot.deadline, self._boot_failures = True, None, 0
            return
        if frame[:1] == _PROGRESS and slot.task_id is not None:
            self._receive_progress(slot, frame)
            return
        try:
            if slot.task_id is None:
                raise ProtocolError("message while holding no task")
            result = _decode_result(frame, slot.task_id)
        except ProtocolError as exc:
            log.error("pool process %d sent a malformed message (%s); killing it", slot.pid, exc)
            self._kill(slot, "process sent a malformed message")
            return
        results.append(result)
        self._progress.pop(slot.task_id, None)  # the result supersedes it
        del self._by_task[slot.task_id]
        slot.task_id = slot.deadline = slot.deadline_s = None
        if slot.memory_bytes and result.error == f"WorkerFailureException: {limits.memory_reason(slot.memory_bytes)}":
            self._lose(slot, PIPE_GRACE)  # the child exits after this result: it must get no other task
        elif self._limits is not None:
            self._recycle_if_due(slot)

    def _receive_progress(self, slot: Slot, frame: bytes) -> None:
        if len(frame) < _PROGRESS_HEAD.size:
            log.error("pool process %d sent a malformed progress report; killing it", slot.pid)
            self._kill(slot, "process sent a malformed message")
            return
        _, fraction = _PROGRESS_HEAD.unpack_from(frame)
        if math.isfinite(fraction):
            self._progress[slot.task_id] = (min(1.0, max(0.0, fraction)),
                                            frame[_PROGRESS_HEAD.size:].decode("utf-8", "replace")[:200])

    def _recycle_if_due(self, slot: Slot) -> None:
        """Between tasks: replace a child that ran its share of tasks or grew too large. It
        is told to go by the closing of its pipe and exits by itself; collect() then
        starts its replacement as for any exit."""
        slot.tasks_done += 1
        reason = self._limits.reason_to_recycle(slot.tasks_done, slot.pid)
        if reason is None:
            return
        log.info("pool process %d: %s; replacing it", slot.pid, reason)
        slot.recycled = reason
        self._lose(slot, KILL_GRACE)
        slot.conn.close()

    def _enforce_deadlines(self, now: float, results: list[Result]) -> None:
        for slot in [s for s in self._slots if s.deadline is not None and s.deadline <= now]:
            if slot.killed:
                log.error("pool process %d did not exit within %g s of SIGKILL; abandoning it", slot.pid, KILL_GRACE)
                self._retire(slot, results, wait=0.0)
            elif slot.lost:
                self._kill(slot, "process closed its pipe to the pool but did not exit")
            elif not slot.ready:
                self._kill(slot, f"process did not start within {BOOT_TIMEOUT:g} s")
            else:
                log.warning("pool process %d: task %s timed out after %g s; killing it",
                            slot.pid, slot.task_id, slot.deadline_s)
                self._kill(slot, f"timed out after {slot.deadline_s:g} s")

    def _lose(self, slot: Slot, grace: float) -> None:
        """Stop reading the child; collect() retires it when its exit is seen, or acts after `grace`."""
        slot.lost, slot.deadline = True, time.monotonic() + grace
        self._unregister(slot.conn.fileno())  # an EOF pipe would otherwise wake every poll

    def _kill(self, slot: Slot, reason: str) -> None:
        """SIGKILL the child's group, with `reason` as the failure message of its task."""
        if not slot.killed:
            self._lose(slot, KILL_GRACE)
            slot.killed, slot.kill_reason = True, reason
            _kill_group(slot.pid)

    def _retire(self, slot: Slot, results: list[Result], wait: float = REAP_TIMEOUT) -> None:
        """The child has exited (or is abandoned): fail what it held, reap it, forget it."""
        _kill_group(slot.pid)  # grandchildren may outlive it; its unreaped exit keeps the group id ours
        slot.process.join(wait)
        if slot.cpu_seconds and slot.process.exitcode == limits.EXIT_CPU and slot.task_id is not None:
            slot.kill_reason = limits.cpu_reason(slot.cpu_seconds)  # the limit, not a crash: never retried
        reason = slot.kill_reason or _exit_reason(slot.process.exitcode)
        if slot.process.exitcode is None:
            self._dying.append(slot.process)
        self._forget(slot)
        if slot.task_id is not None:
            log.warning("pool process %d (task %s): %s; starting a replacement", slot.pid, slot.task_id, reason)
            results.append(_failure(slot, reason))
            del self._by_task[slot.task_id]
        elif not slot.ready:
            self._boot_failures += 1
            delay = min(0.1 * 2 ** self._boot_failures, RESTART_BACKOFF_MAX)
            self._restart_at = time.monotonic() + delay
            log.error("pool process %d died while starting (%s); retrying in %.1f s", slot.pid, reason, delay)
        else:
            if slot.recycled is None:
                log.warning("idle pool process %d: %s; starting a replacement", slot.pid, reason)

    def _refill(self) -> None:
        self._dying = [p for p in self._dying if p.exitcode is None]
        if len(self._slots) < self._size and time.monotonic() >= self._restart_at:
            for _ in range(self._size - len(self._slots)):
                self._spawn()

    def _spawn(self) -> None:
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        process = _CTX.Process(target=_child_main, args=(child_conn, os.getpid()), name="faas-pool")
        process.start()
        child_conn.close()
        death_fd, owned = _death_fd(process)
        slot = Slot(process, parent_conn, process.pid, death_fd, owned, started=time.monotonic())
        slot.deadline = slot.started + BOOT_TIMEOUT
        self._slots.append(slot)
        for fd, is_pipe in ((parent_conn.fileno(), True), (death_fd, False)):
            self._by_fd[fd] = (slot, is_pipe)
            self._poller.register(fd, select.POLLIN)

    def _unregister(self, fd: int) -> None:
        if self._by_fd.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def _forget(self, slot: Slot) -> None:
        """Drop the slot and release its descriptors (unregistered first: fd numbers are reused)."""
        if not slot.conn.closed:
            self._unregister(slot.conn.fileno())
            slot.conn.close()
        self._unregister(slot.death_fd)
        if slot.owns_death_fd:
            os.close(slot.death_fd)
        if slot.process.exitcode is not None:
            slot.process.close()
        self._slots.remove(slot)


def _failure(slot: Slot, reason: str) -> Result:
    """The task of a child that died. A crash (exit, signal) may be retried; a kill the pool
    decided (deadline, cancel, a misbehaving child) may not."""
    exc = WorkerFailureException(reason)
    return Result(slot.task_id, TaskStatus.FAILED.value, dumps(exc), f"WorkerFailureException: {reason}",
                  slot.started_wall, time.time(), retry=slot.kill_reason is None)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "process did not exit after SIGKILL"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process killed by signal {name} ({code})"
    return f"process exited with code {code}"


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group and the child itself (it may not have called setsid yet)."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _death_fd(process: BaseProcess) -> tuple[int, bool]:
    """A descriptor readable once the child exits. A pidfd where the OS has one, because
    process.sentinel stays open while any grandchild that inherited it lives on."""
    try:
        return os.pidfd_open(process.pid), True
    except (AttributeError, OSError):
        return process.sentinel, False


def _encode_task(task: Task, max_result_bytes: int) -> bytes:
    task_id, function_id = task.task_id.encode(), (task.function_id or "").encode()
    retry_on = "\n".join(task.retry_on).encode()
    soft = math.nan if task.soft_deadline_s is None else task.soft_deadline_s
    head = _TASK_HEAD.pack(len(task_id), len(function_id), len(task.function), len(task.arguments), len(retry_on),
                           max_result_bytes, soft, task.memory_bytes or 0, task.cpu_seconds or 0)
    return b"".join((head, task_id, function_id, task.function, task.arguments, retry_on))


def _decode_task(frame: bytes) -> tuple[str, str, bytes, bytes, tuple[str, ...], int, float, int, int]:
    lengths = _TASK_HEAD.unpack_from(frame)
    fields, at = [], _TASK_HEAD.size
    for n in lengths[:5]:
        fields.append(frame[at:at + n])
        at += n
    retry_on = tuple(fields[4].decode().split("\n")) if fields[4] else ()
    return (fields[0].decode(), fields[1].decode(), fields[2], fields[3], retry_on, lengths[5], lengths[6],
            lengths[7], lengths[8])


def _encode_result(result: Result) -> bytes:
    """The child's answer for the task it holds (the parent knows which: the id is not sent)."""
    error = result.error.encode("utf-8", "replace")
    output = result.output.encode("utf-8", "replace")
    started = math.nan if result.started_at is None else result.started_at
    finished = math.nan if result.finished_at is None else result.finished_at
    head = _RESULT_HEAD.pack(_STATUS_BYTES[result.status], result.retry, started, finished, len(error), len(output))
    return b"".join((head, error, output, result.result))


def _encode_progress(fraction: float, message: str) -> bytes:
    return _PROGRESS_HEAD.pack(_PROGRESS, fraction) + message.encode("utf-8", "replace")


def _decode_result(frame: bytes, task_id: str) -> Result:
    """Parse a child's result frame; it is untrusted, so check every length."""
    if len(frame) < _RESULT_HEAD.size:
        raise ProtocolError(f"result frame of {len(frame)} bytes")
    status, retry, started, finished, error_len, output_len = _RESULT_HEAD.unpack_from(frame)
    at = _RESULT_HEAD.size
    if status not in _BYTES_STATUS or error_len + output_len > len(frame) - at:
        raise ProtocolError("bad result header")
    error = frame[at:at + error_len].decode("utf-8", "replace")
    output = frame[at + error_len:at + error_len + output_len].decode("utf-8", "replace")
    return Result(task_id, _BYTES_STATUS[status], frame[at + error_len + output_len:], error,
                  None if math.isnan(started) else started, None if math.isnan(finished) else finished,
                  retry=retry, output=output)


def _child_main(conn: Connection, parent_pid: int) -> None:
    """A child's whole life: own session, then recv task -> run_call -> send result, forever."""
    os.setsid()  # own process group, so the parent's killpg also takes any grandchildren
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    limits.install_cpu_handler()
    cache: dict = {}
    capture, soft = OutputCapture(), SoftLimit()
    capture.install_logging()
    progress.install(lambda fraction, message: conn.send_bytes(_encode_progress(fraction, message)))
    try:
        conn.send_bytes(_READY)
        while True:
            (task_id, function_id, function, arguments, retry_on, max_result_bytes, soft_s, memory,
             cpu) = _decode_task(conn.recv_bytes())
            result, worn = _limited_call(task_id, function_id, function, arguments, max_result_bytes, cache,
                                         memory, cpu, capture, soft.armed(soft_s), retry_on)
            conn.send_bytes(_encode_result(result))
            if worn:  # a heap that ran out of room is not trusted with the next task
                return
    except (EOFError, OSError):
        return  # the parent closed the pipe or went away: nothing left to serve


# --- a child and everything it started die with the parent ------------------------------
# The child leads its own session (so killpg reaches its grandchildren), which also means
# nothing stops it when its parent is SIGKILLed: a `while True: pass` would spin forever.

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_INTERVAL = 0.5  # seconds between checks on the parent where no pidfd can watch it


def _die_with_parent(parent_pid: int) -> None:
    """In a new child, right after setsid: the kernel SIGKILLs the child the moment its
    parent dies (whatever the user's code does: ignores signals, holds the GIL), and a
    guardian process in the child's group then kills the whole group, grandchildren too.
    A thread in the child could not do the latter: the SIGKILL takes it along."""
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: no signal will come
        _kill_own_group()
    _start_guardian(parent_pid)


def _set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG) through ctypes; False where there is no such call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kill_own_group() -> None:
    """SIGKILL the group this child leads (never a group it merely belongs to)."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _start_guardian(parent_pid: int) -> None:
    """Fork a process that waits for `parent_pid` to exit, then SIGKILLs the child's group.
    It lives in that group, so every kill the pool aims at the child takes it too."""
    group = os.getpgrp()
    if os.fork() != 0:
        return
    try:
        _guard(parent_pid, group)
    finally:
        os._exit(0)


def _guard(parent_pid: int, group: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # only the pool's SIGKILL ends it early
        signal.signal(sig, signal.SIG_IGN)
    # Hold nothing of the child's: its pipe to the parent and multiprocessing's sentinel
    # must close when the child exits, not when the guardian does.
    os.closerange(3, 1 << 16)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        watch = os.pidfd_open(parent_pid)  # readable once the parent has exited (or already has)
    except ProcessLookupError:
        watch = None  # already gone and reaped
    except (AttributeError, OSError):
        watch = -1  # no pidfd here: poll
    if watch is not None and watch >= 0:
        select.select([watch], [], [])
    elif watch == -1:
        while _exists(parent_pid):
            time.sleep(PARENT_POLL_INTERVAL)
    if os.getpgrp() == group:
        os.killpg(group, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _limited_call(task_id, function_id, function, arguments, max_result_bytes, cache, memory: int, cpu: int,
                  capture: OutputCapture, soft: SoftLimit, retry_on: tuple[str, ...]) -> tuple[Result, bool]:
    """_run_task inside the task's resource limits (workers.limits); (result, whether the
    child must be replaced). A MemoryError under a memory limit is the limit's failure."""
    try:
        lift = limits.apply(memory, cpu)
    except limits.CannotHonour as exc:
        reason = f"this worker cannot honour the task's limits: {exc}"
        return Result(task_id, TaskStatus.FAILED.value, dumps(WorkerFailureException(reason)),
                      f"WorkerFailureException: {reason}", time.time(), time.time()), False
    try:
        result = _run_task(task_id, function, arguments, max_result_bytes, cache, function_id or None,
                           capture, soft, retry_on)
    finally:
        lift()
    if memory and result.status == TaskStatus.FAILED.value and "MemoryError" in result.error.partition("\n")[0]:
        reason = limits.memory_reason(memory)
        return dataclasses.replace(result, result=dumps(WorkerFailureException(reason)), retry=False,
                                   error=f"WorkerFailureException: {reason}"), True
    return result, False


def _run_task(task_id: str, function: bytes, arguments: bytes, max_result_bytes: int, cache: dict,
              function_id: str | None, capture: OutputCapture, soft: SoftLimit,
              retry_on: tuple[str, ...] = ()) -> Result:
    """One call in the child, its output captured and its soft limit armed."""
    started = time.time()
    progress.task_started()
    try:
        with capture, soft:
            result = execution.run_call(task_id, function, arguments, max_result_bytes, cache,
                                        function_id=function_id, retry_on=retry_on)
    except SoftTimeLimitExceeded as exc:  # the limit fired just as the function returned
        result = Result(task_id, TaskStatus.FAILED.value, dumps(exc), f"SoftTimeLimitExceeded: {exc}", started,
                        time.time())
    output = capture.text()
    return dataclasses.replace(result, output=output) if output else result
