"""The performance suite: `python -m bench [--quick] [--out DIR]` (see docs/benchmark.md)."""
