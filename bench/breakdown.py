"""Where the time goes: per-task timestamps (client and server) turned into stage durations."""

from __future__ import annotations

from bench import stats

# (stage, from, to): "sent" and "seen" are the client's clock, the rest come from the task's
# Redis hash. queued_at is stamped when the web process builds the Redis pipeline (after the
# INSERT, before the commit); stored_at when the dispatcher writes the final state.
STAGES = (
    ("client → web", "sent", "received_at"),
    ("web → queued", "received_at", "queued_at"),
    ("queued → dispatched", "queued_at", "dispatched_at"),
    ("dispatched → started", "dispatched_at", "started_at"),
    ("run", "started_at", "finished_at"),
    ("finished → stored", "finished_at", "stored_at"),
    ("stored → client sees it", "stored_at", "seen"),
    ("total", "sent", "seen"),
)


def breakdown(rows: list[dict], sent: list[float | None], seen: list[float | None]) -> dict[str, dict]:
    """Median, p95 (and the rest of `stats.summary`) of every stage, in milliseconds."""
    durations: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    for row, s, e in zip(rows, sent, seen):
        point = dict(row, sent=s, seen=e)
        for name, start, end in STAGES:
            if point.get(start) is not None and point.get(end) is not None:
                durations[name].append(point[end] - point[start])
    return {name: stats.summary(values, 1000.0) for name, values in durations.items()}


def ordered(runs: list[dict], modes: list[str]) -> list[dict]:
    """Sequential runs first, then runs under load; modes in the configured order."""
    return sorted(runs, key=lambda r: (not r["run"].startswith("sequential"),
                                       modes.index(r["mode"]) if r["mode"] in modes else len(modes)))
