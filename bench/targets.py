"""The issue's targets (push mode, 2 worker processes, gunicorn for the REST API), each
compared with what this run measured: met, not met, or not measured (never silently skipped)."""

from __future__ import annotations

import math

from bench.config import TARGET_MODE

MET, MISSED, UNKNOWN = "met", "NOT MET", "not measured"


def _find(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _verdict(value, ok) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    return MET if ok(value) else MISSED


def evaluate(results: dict) -> list[dict]:
    rows = []

    def add(name: str, target: str, value, unit: str, ok, note: str = "") -> None:
        rows.append({"target": name, "goal": target, "measured": value, "unit": unit,
                     "verdict": _verdict(value, ok), "note": note})

    throughput = results.get("throughput", [])
    batch = _find(throughput, mode=TARGET_MODE, style="batch", server="gunicorn")
    add("no-op throughput, batched", "≥ 1,000 tasks/s", batch and batch["tasks_per_s"], "tasks/s",
        lambda v: v >= 1000 and batch["unfinished"] == 0)
    single = _find(throughput, mode=TARGET_MODE, style="per-request", server="gunicorn")
    add("no-op throughput, one request per task", "≥ 300 tasks/s", single and single["tasks_per_s"], "tasks/s",
        lambda v: v >= 300 and single["unfinished"] == 0)
    lat = _find(results.get("latency", []), mode=TARGET_MODE, style="submit + result")
    add("no-op round trip p50 (long-poll)", "≤ 5 ms", lat and lat["round_trip_ms"]["p50"], "ms", lambda v: v <= 5.0)
    for mode in results["meta"]["config"]["modes"]:
        points = [p for p in results.get("scaling", []) if p["mode"] == mode and p["kind"] == "sleep"]
        worst = min(points, key=lambda p: p["efficiency_ideal"] or 0.0) if points else None
        add(f"weak-scaling efficiency, sleep tasks, {mode}", "≥ 90 % up to 8 processes",
            worst and worst["efficiency_ideal"] * 100.0, "% (lowest)", lambda v: v >= 90.0,
            f"lowest at {worst['processes']} processes; measured up to {max(p['processes'] for p in points)}"
            if worst else "")
    mem = results.get("memory") or {}
    add("dispatcher RSS during the burst", "< 150 MB", mem.get("dispatcher_rss_mb", {}).get("peak"), "MB (peak)",
        lambda v: v < 150.0, f"burst of {mem.get('tasks', '?')} tasks")
    add("/status p95 during the burst", "< 50 ms", mem.get("status_ms", {}).get("p95"), "ms", lambda v: v < 50.0,
        f"{mem.get('status_ms', {}).get('n', 0)} requests")
    return rows
