"""Percentiles and summaries of samples, without numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], scale: float = 1.0) -> dict:
    """n, mean, p50, p95, p99 and max of `values` multiplied by `scale` (1000: seconds to ms)."""
    scaled = [v * scale for v in values]
    if not scaled:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    return {"n": len(scaled), "mean": sum(scaled) / len(scaled), "p50": percentile(scaled, 50),
            "p95": percentile(scaled, 95), "p99": percentile(scaled, 99), "max": max(scaled)}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan
