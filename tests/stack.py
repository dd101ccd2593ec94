"""The end-to-end process stack lives in scripts/ (the benchmark uses it too)."""

from scripts.stack import REPO, Proc, Stack, endpoint_of

__all__ = ["REPO", "Proc", "Stack", "endpoint_of"]
