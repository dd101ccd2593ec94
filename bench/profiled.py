"""Run a manage.py command with pyinstrument armed but idle: SIGUSR1 starts sampling the main
thread, SIGUSR2 (or the exit) stops it, and the session is saved to the path given first.

    python -m bench.profiled OUT.pyisession run_dispatcher -m push -p 7001

so a profile covers only the measured window, not start-up, imports or warm-up.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

from pyinstrument import Profiler

INTERVAL = 0.0002  # seconds between samples


def main(argv: list[str]) -> None:
    path, command = argv[0], argv[1:]
    profiler = Profiler(interval=INTERVAL)

    def start(signum, frame):
        if not profiler.is_running:
            profiler.start()

    def stop(signum=None, frame=None):
        if profiler.is_running:
            profiler.stop()
        if profiler.last_session is not None:
            profiler.last_session.save(path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    atexit.register(stop)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "faas_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *command])


if __name__ == "__main__":
    main(sys.argv[1:])
