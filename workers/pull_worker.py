"""`python -m workers.pull_worker N tcp://host:7001`: a pull worker with N processes."""

import sys

from workers.zmq_worker import main as run_worker


def main(argv=None) -> int:
    return run_worker("pull", argv)


if __name__ == "__main__":
    sys.exit(main())
