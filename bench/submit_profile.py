"""Where one client's sequential submits spend their time: the web side under pyinstrument
(every gunicorn request sampled, bench/gunicorn_profile.py) and the client side in this
process, for N `FaaSClient.submit` calls one after the other. No dispatcher runs: the
tasks stay queued, so only the submit path is measured.

    python -m bench.submit_profile [N] [--out DIR]   (default 2000, bench-out/submit-profile)

Writes web-submit-{tree,flat}.txt and client-submit-{tree,flat}.txt in DIR and prints the
submit rate and the tops of both flat listings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyinstrument import Profiler

from bench.harness import BenchPlatform
from bench.profiling import SERVER, render
from functions.client import FaaSClient


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.submit_profile")
    parser.add_argument("count", type=int, nargs="?", default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/submit-profile"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    directory = out / "profile"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.pyisession"):
        stale.unlink()
    harness = BenchPlatform(out)
    try:
        harness.start(daphne=False)
        harness.start_gunicorn(profile=True, name=SERVER)
        client = FaaSClient(harness.urls[SERVER], token="")
        function_id = harness.functions["noop"]
        for _ in range(50):  # warm threads, imports and connections outside the window
            client.submit(function_id, 1)
        (directory / "recording").write_text("submit")
        profiler = Profiler(interval=0.0002)
        began = time.perf_counter()
        profiler.start()
        for _ in range(args.count):
            client.submit(function_id, 1)
        profiler.stop()
        elapsed = time.perf_counter() - began
        (directory / "recording").unlink()
        profiler.last_session.save(str(directory / "client-submit.pyisession"))
        harness.servers[SERVER].stop(timeout=60)  # its workers save their sessions on the way out
        print(f"{args.count} sequential submits in {elapsed:.2f} s: {args.count / elapsed:.0f}/s, "
              f"{elapsed / args.count * 1000:.2f} ms each (under the profilers)")
        print("web:\n" + render(sorted(directory.glob("web-submit-*.pyisession")), directory, "web-submit"))
        print("client:\n" + render([directory / "client-submit.pyisession"], directory, "client-submit"))
    finally:
        harness.close()


if __name__ == "__main__":
    main()
