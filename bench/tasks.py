"""The functions the benchmark runs. They live in an importable module, so dill pickles them
by reference and every worker (started from the project root) imports them by name."""

import time


def noop():
    """The empty task: what is measured is the platform's overhead alone."""
    return None


def pause(seconds: float):
    """A task that holds its process for `seconds` without using the CPU."""
    time.sleep(seconds)


def noop_with(value):
    """The empty task with one argument, for map."""
    return None
