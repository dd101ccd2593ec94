"""Test helpers: the condition wait lives with the process tools in scripts/."""

from scripts.waiting import wait_until

__all__ = ["wait_until"]
