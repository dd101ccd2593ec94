"""gunicorn hooks that profile every request with pyinstrument (only for `python -m bench --profile`).

gthread workers run requests on pool threads, and pyinstrument samples only the thread that
started it, so each thread keeps its own profiler, started and stopped around each request
(pyinstrument combines the sessions of one profiler). Only requests that begin while the
file $FAAS_BENCH_PROFILE_DIR/recording exists are sampled, so start-up and warm-up stay out.
When the worker exits, the threads' sessions are combined and saved to
$FAAS_BENCH_PROFILE_DIR/web-<pid>.pyisession.
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
_profilers: list[Profiler] = []


def pre_request(worker, req):
    if not RECORDING.exists():
        return
    profiler = getattr(_local, "profiler", None)
    if profiler is None:
        profiler = _local.profiler = Profiler(interval=INTERVAL)
        with _lock:
            _profilers.append(profiler)
    profiler.start()


def post_request(worker, req, environ, resp):
    profiler = getattr(_local, "profiler", None)
    if profiler is not None and profiler.is_running:
        profiler.stop()


def worker_exit(server, worker):
    with _lock:
        sessions = [p.last_session for p in _profilers if p.last_session is not None]
    if not sessions:
        return
    combined = sessions[0]
    for session in sessions[1:]:
        combined = Session.combine(combined, session)
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    combined.save(str(DIRECTORY / f"web-{os.getpid()}.pyisession"))
