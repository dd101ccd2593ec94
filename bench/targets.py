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
    user_path(results.get("userpath") or {}, add)
    mem = results.get("memory") or {}
    add("dispatcher RSS during the burst", "< 150 MB", mem.get("dispatcher_rss_mb", {}).get("peak"), "MB (peak)",
        lambda v: v < 150.0, f"burst of {mem.get('tasks', '?')} tasks")
    add("/status p95 during the burst", "< 50 ms", mem.get("status_ms", {}).get("p95"), "ms", lambda v: v < 50.0,
        f"{mem.get('status_ms', {}).get('n', 0)} requests")
    return rows


def user_path(up: dict, add) -> None:
    """The issue 11 targets: the platform on the user's path against Celery and Ray, same run."""
    systems = up.get("systems", {})
    ours, celery, ray = (systems.get(name) or {} for name in ("platform", "celery", "ray"))

    def median(system: dict, key: str):
        figure = system.get(key)
        return figure["median"] if figure else None

    def against(key: str, peer: dict, peer_name: str, label: str, higher: bool = True) -> None:
        value, theirs = median(ours, key), median(peer, key)
        ratio = value / theirs if value is not None and theirs else None
        goal = f"{'≥' if higher else '≤'} {peer_name}'s" + (f" ({theirs:,.{0 if higher else 2}f})" if theirs else "")
        add(label, goal, value, "tasks/s" if higher else "ms",
            lambda v: ratio is not None and (ratio >= 1.0 if higher else ratio <= 1.0),
            f"ratio to {peer_name} {ratio:.2f}" if ratio is not None else f"{peer_name} not measured")

    against("executor_tps", ray, "Ray", "user path: executor submit + result, no-ops")
    against("map_tps", ray, "Ray", "user path: FaaSExecutor.map, no-ops")
    against("plain_tps", celery, "Celery", "user path: client.submit then client.result per task")
    against("threads_tps", celery, "Celery", "user path: the same from 16 threads")
    against("round_trip_p50", celery, "Celery", "user path: client.call round trip p50", higher=False)
    p50, p99 = median(ours, "round_trip_p50"), median(ours, "round_trip_p99")
    add("user path: client.call round trip p99", "≤ 2 × its p50", p99, "ms",
        lambda v: p50 is not None and v <= 2 * p50, f"p50 {p50:.2f} ms" if p50 else "")
    add("user path: 20 × sleep(0.1) makespan / ideal", "≤ 1.064 (before issue 11)", median(ours, "sleep_ratio"),
        "×", lambda v: v <= 1.064)
