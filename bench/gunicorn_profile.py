"""gunicorn hooks that profile requests with pyinstrument (only for `python -m bench --profile`).

gthread workers run requests on pool threads, and pyinstrument samples only the thread that
started it, so each thread keeps its own profiler per phase, started and stopped around each
request (pyinstrument combines the sessions of one profiler). A request is sampled only while
the file $FAAS_BENCH_PROFILE_DIR/recording exists; it holds the phase's name, so start-up
and warm-up stay out and each measured run gets its own profile. When the worker exits, the
threads' sessions are combined per phase and saved as web-<phase>-<pid>.pyisession.
"""

import os
import threading
from pathlib import Path

from pyinstrument import Profiler
from pyinstrument.session import Session

INTERVAL = 0.0002  # seconds between samples: requests last a few milliseconds
DIRECTORY = Path(os.environ.get("FAAS_BENCH_PROFILE_DIR", "bench-out/profile"))
RECORDING = DIRECTORY / "recording"

_local = threading.local()
_lock = threading.Lock()
_profilers: dict[str, list[Profiler]] = {}


def _phase() -> str | None:
    try:
        return RECORDING.read_text().strip() or "run"
    except FileNotFoundError:
        return None


def pre_request(worker, req):
    phase = _phase()
    if phase is None:
        return
    mine = getattr(_local, "profilers", None)
    if mine is None:
        mine = _local.profilers = {}
    profiler = mine.get(phase)
    if profiler is None:
        profiler = mine[phase] = Profiler(interval=INTERVAL)
        with _lock:
            _profilers.setdefault(phase, []).append(profiler)
    _local.running = profiler
    profiler.start()


def post_request(worker, req, environ, resp):
    profiler = getattr(_local, "running", None)
    if profiler is not None and profiler.is_running:
        profiler.stop()
    _local.running = None


def worker_exit(server, worker):
    with _lock:
        phases = {phase: [p.last_session for p in profilers if p.last_session is not None]
                  for phase, profilers in _profilers.items()}
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    for phase, sessions in phases.items():
        if not sessions:
            continue
        combined = sessions[0]
        for session in sessions[1:]:
            combined = Session.combine(combined, session)
        combined.save(str(DIRECTORY / f"web-{phase}-{os.getpid()}.pyisession"))
