"""Run a manage.py command with pyinstrument armed but idle: each SIGUSR1 starts sampling the
main thread, each SIGUSR2 stops it and saves that window as <prefix>-<n>.pyisession (n = 1,
2, ...), so every profile covers only one measured run, not start-up, imports or warm-up.

    python -m bench.profiled OUT/dispatcher run_dispatcher -m push -p 7001
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

from pyinstrument import Profiler

INTERVAL = 0.0002  # seconds between samples


def main(argv: list[str]) -> None:
    prefix, command = argv[0], argv[1:]
    state = {"profiler": None, "windows": 0}

    def start(signum, frame):
        if state["profiler"] is None:
            state["profiler"] = Profiler(interval=INTERVAL)
            state["profiler"].start()

    def stop(signum=None, frame=None):
        profiler, state["profiler"] = state["profiler"], None
        if profiler is None:
            return
        session = profiler.stop()
        state["windows"] += 1
        path = f"{prefix}-{state['windows']}.pyisession"
        session.save(path + ".part")
        os.replace(path + ".part", path)  # the suite waits for this name: it appears only when complete

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    atexit.register(stop)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "faas_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *command])


if __name__ == "__main__":
    main(sys.argv[1:])
