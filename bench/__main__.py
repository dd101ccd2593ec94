"""`python -m bench [--quick] [--out DIR]`: run the performance suite and write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.config import LEVELS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tasks and repetitions (under 2 minutes)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test suite's tiny pass
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory (default bench-out)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile web and dispatcher with pyinstrument during a one-request-per-task run")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    level = "smoke" if args.smoke else "quick" if args.quick else "full"

    from bench.report import write_report
    from bench.suite import Suite, save
    from bench.targets import evaluate

    command = " ".join(["python -m bench", *argv])
    results = Suite(LEVELS[level], args.out.resolve(), profile=args.profile, command=command).run()
    results["targets"] = evaluate(results)
    save(results, args.out)
    report = write_report(results, args.out)
    print(f"report: {report}\nfigures: {args.out / 'results.json'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
