"""`python -m workers.push_worker N tcp://host:7001`: a push worker with N processes."""

import sys

from workers.zmq_worker import main as run_worker


def main(argv=None) -> int:
    return run_worker("push", argv)


if __name__ == "__main__":
    sys.exit(main())
