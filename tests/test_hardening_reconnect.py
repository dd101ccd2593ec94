"""Reconnects lose nothing (issue 12, item 4): the worker's back-off grows and resets only on
an answer; a worker keeps reading while it waits to reconnect; its re-registration names every
task it holds or finished unconfirmed; and a restarted dispatcher completes every task."""

from __future__ import annotations

import signal
import time

import dill
import pytest
import zmq

from scripts.stack import Stack
from tests.helpers import wait_until
from tests.stack import endpoint_of
from workers import protocol
from workers.zmq_worker import Liveness, Unconfirmed

# --- the rules, with a fake clock and a fake random source ----------------------------------


def test_backoff_doubles_to_the_cap_with_jitter_between_half_and_all_of_each_step():
    lowest = Liveness(1.0, 3, initial=0.5, cap=8.0, rand=lambda: 0.0)
    highest = Liveness(1.0, 3, initial=0.5, cap=8.0, rand=lambda: 0.999999)
    assert [lowest.next_backoff() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [round(highest.next_backoff(), 3) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_only_an_answer_resets_the_backoff_not_a_new_connection():
    liveness = Liveness(1.0, 3, initial=0.5, cap=8.0, rand=lambda: 1.0)
    for _ in range(3):
        liveness.next_backoff()
    liveness.connected(now=100.0)  # a fresh socket proves nothing
    assert not liveness.lost(102.9) and liveness.lost(103.0)
    assert liveness.next_backoff() == 4.0
    liveness.heard(now=200.0)  # the dispatcher said something
    assert liveness.next_backoff() == 0.5
    assert not liveness.lost(202.9) and liveness.lost(203.0)


def _result(task_id: str) -> protocol.Result:
    return protocol.Result(task_id, "COMPLETED", b"")


def test_results_stay_unconfirmed_until_the_dispatcher_has_answered_for_a_ttl_after_them():
    unconfirmed = Unconfirmed(ttl=3.0)
    unconfirmed.add(10.0, (_result("a"), _result("b")))
    unconfirmed.add(11.0, (_result("c"),))
    unconfirmed.confirm(12.9)
    assert [r.task_id for r in unconfirmed.results()] == ["a", "b", "c"]
    unconfirmed.confirm(13.0)
    assert [r.task_id for r in unconfirmed.results()] == ["c"] and len(unconfirmed) == 1
    unconfirmed.confirm(20.0)
    assert unconfirmed.results() == () and len(unconfirmed) == 0


def test_unconfirmed_results_are_capped_in_bytes_oldest_first():
    unconfirmed = Unconfirmed(ttl=3.0, max_bytes=10)
    big = [protocol.Result(name, "COMPLETED", b"x" * 4) for name in "abcd"]
    for i, result in enumerate(big):
        unconfirmed.add(float(i), (result,))
    assert [r.task_id for r in unconfirmed.results()] == ["c", "d"] and unconfirmed.bytes == 8
    unconfirmed.confirm(100.0)
    assert unconfirmed.bytes == 0


# --- a real worker process against a dispatcher the test plays by hand -----------------------

INTERVAL, LIVENESS = 0.2, 2  # the worker's heartbeat settings below: silence for 0.4 s means lost
TTL = INTERVAL * LIVENESS


class FakeDispatcher:
    """A ROUTER socket the test drives; records what the worker sends, with arrival times."""

    def __init__(self):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.identity: bytes | None = None
        self.messages: list[tuple[float, object]] = []

    def pump(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            if self.socket.poll(max(0, int((end - time.monotonic()) * 1000)) or 1):
                identity, *frames = self.socket.recv_multipart()
                self.identity = identity
                self.messages.append((time.monotonic(), protocol.decode(frames)))
            elif time.monotonic() >= end:
                return

    def of(self, kind) -> list[tuple[float, object]]:
        return [(t, m) for t, m in self.messages if isinstance(m, kind)]

    def wait_for(self, kind, count: int, timeout: float = 30.0) -> list[tuple[float, object]]:
        def enough():
            self.pump(0.05)
            return len(self.of(kind)) >= count
        wait_until(enough, timeout=timeout, interval=0, message=f"fewer than {count} {kind.__name__}")
        return self.of(kind)

    def send(self, message) -> None:
        self.socket.send_multipart([self.identity, *protocol.encode(message)])

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def fake():
    dispatcher = FakeDispatcher()
    yield dispatcher
    dispatcher.close()


@pytest.fixture
def procs(tmp_path, request):
    started = Stack(redis_url="redis://127.0.0.1:1/0", database_url="sqlite:///unused", workdir=tmp_path)
    yield started
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(started.logs())
    started.close()


def _worker(procs: Stack, endpoint: str, processes: int = 1):
    return procs.worker("push", processes, endpoint, "--heartbeat-interval", str(INTERVAL),
                        "--heartbeat-liveness", str(LIVENESS))


def _sleep_task(task_id: str, seconds: float) -> protocol.Task:
    return protocol.Task(task_id, "fn", dill.dumps(time.sleep), dill.dumps(((seconds,), {})))


def test_a_worker_whose_dispatcher_is_silent_backs_off_more_each_time_and_resets_on_an_answer(fake, procs):
    _worker(procs, fake.endpoint)
    registers = fake.wait_for(protocol.Register, 5, timeout=60)
    gaps = [b[0] - a[0] for a, b in zip(registers, registers[1:])]
    # Silence (ttl) then a back-off of half to all of 0.5, 1, 2, 4 s: growing, never flat.
    assert gaps[3] >= TTL + 2.0 - 0.1 and gaps[3] > gaps[0] + 1.0, gaps
    answered_until = time.monotonic() + 1.0
    while time.monotonic() < answered_until:  # answer for a while: the back-off starts over
        fake.send(protocol.Heartbeat())
        fake.pump(0.1)
    count = len(fake.of(protocol.Register))
    assert count == 5  # an answered worker stays on its connection
    silent_from = time.monotonic()
    next_register = fake.wait_for(protocol.Register, count + 1, timeout=30)[-1][0]
    assert next_register - silent_from < TTL + 0.5 + 1.0  # the first step again, not 8 s


def test_tasks_sent_while_the_worker_waits_to_reconnect_are_run_not_dropped(fake, procs):
    _worker(procs, fake.endpoint)
    first = fake.wait_for(protocol.Register, 1)[0][0]
    fake.pump(first + TTL + 0.1 - time.monotonic())  # the worker has just given up on us: it waits to reconnect
    fake.send(protocol.Tasks((_sleep_task("late-1", 0.0), _sleep_task("late-2", 0.0))))
    fake.wait_for(protocol.Results, 1)

    def finished():
        fake.pump(0.05)
        return {r.task_id for _, m in fake.of(protocol.Results) for r in m.results} >= {"late-1", "late-2"}
    wait_until(finished, timeout=15, interval=0)
    registers = fake.of(protocol.Register)
    for _, register in registers[1:]:  # had it re-registered, it would have had to report them
        assert {"late-1", "late-2"} <= set(register.info.holding)


def test_a_reregistration_reports_running_backlog_and_unconfirmed_results_then_sends_them(fake, procs):
    _worker(procs, fake.endpoint)
    fake.wait_for(protocol.Register, 1)
    fake.send(protocol.Tasks((_sleep_task("running", 1.0), _sleep_task("backlog", 1.0))))
    # Now silence: the worker reconnects, and again after "running" has finished.
    registers = fake.wait_for(protocol.Register, 2)
    assert set(registers[1][1].info.holding) == {"running", "backlog"}

    def reported_finished():
        fake.pump(0.05)
        return any("running" in r.info.holding and "backlog" in r.info.holding
                   and any(x.task_id == "running" for _, m in fake.of(protocol.Results) for x in m.results
                           if _ > t) for t, r in fake.of(protocol.Register))
    wait_until(reported_finished, timeout=30, interval=0,
               message="no registration held the finished task and then re-sent its result")


# --- a real push dispatcher restarted under a real worker ------------------------------------


def record_then_sleep(path: str, number: int, seconds: float) -> int:
    """The side effect that counts executions: one line per run (O_APPEND: lines never interleave)."""
    with open(path, "a") as handle:
        handle.write(f"{number}\n")
    time.sleep(seconds)
    return number


DISPATCHER_BEATS = ("--heartbeat-interval", "0.3", "--heartbeat-liveness", "5")
# A worker quick to give up on a silent dispatcher, so it is often waiting to reconnect when the
# new one comes up and starts sending it work (the moment that used to lose tasks).
WORKER_BEATS = ("--heartbeat-interval", "0.3", "--heartbeat-liveness", "2")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_push_dispatcher_restarted_with_tasks_waiting_and_in_flight_completes_each_exactly_once(
        stack, tmp_path, stop):
    from tests.platform import Api

    api = Api(stack.web())
    dispatcher = stack.dispatcher("push", *DISPATCHER_BEATS)
    port = int(endpoint_of(dispatcher).rsplit(":", 1)[1])
    stack.worker("push", 2, endpoint_of(dispatcher), *WORKER_BEATS)
    runs = tmp_path / "runs.txt"
    function_id = api.register(record_then_sleep)
    task_ids = [api.submit(function_id, str(runs), n, 0.3) for n in range(16)]
    for restart in (1, 2):  # each restart is a fresh chance to hit the worker mid-wait
        started = 2 + 4 * (restart - 1)
        wait_until(lambda n=started: runs.exists() and len(runs.read_text().split()) >= n, timeout=60)
        dispatcher.signal(stop)
        dispatcher.popen.wait(30)
        assert any(api.status(t) == "QUEUED" for t in task_ids)  # tasks still waiting, some were in flight
        dispatcher = stack.dispatcher("push", *DISPATCHER_BEATS, port=port)
    bodies = [api.result(t, wait=90) for t in task_ids]
    assert [b["status"] for b in bodies] == ["COMPLETED"] * 16, [b.get("error") for b in bodies]
    assert sorted(int(n) for n in runs.read_text().split()) == list(range(16))  # each ran exactly once
