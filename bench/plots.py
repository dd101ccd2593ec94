"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from bench.breakdown import STAGES, ordered  # noqa: E402

COLORS = {"local": "tab:blue", "pull": "tab:orange", "push": "tab:green"}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def throughput(rows: list[dict], out: Path) -> str | None:
    if not rows:
        return None
    labels = [f"{r['mode']}\n{r['style']}" + ("" if r["server"] == "gunicorn" else f"\n({r['server']})") for r in rows]
    values = [r["tasks_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(labels, values, color=[COLORS.get(r["mode"], "grey") for r in rows],
           hatch=None, alpha=0.9, edgecolor="black")
    for bar, r in zip(ax.patches, rows):
        if r["style"] == "batch":
            bar.set_hatch("//")
    ax.axhline(1000, color="red", linestyle="--", linewidth=1, label="target, batched (1,000/s)")
    ax.axhline(300, color="purple", linestyle=":", linewidth=1, label="target, one request per task (300/s)")
    ax.set_ylabel("no-op tasks per second")
    ax.set_title("Throughput, first submit to last result")
    ax.legend(fontsize=8)
    return _save(fig, out / "throughput.png")


def latency(rows: list[dict], out: Path) -> str | None:
    rows = [r for r in rows if r.get("samples_ms")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        samples = sorted(r["samples_ms"])
        call = r.get("style") == "call"
        ax.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))],
                label=f"{r['mode']}, call" if call else r["mode"], color=COLORS.get(r["mode"]),
                linestyle="--" if call else "-")
    ax.axvline(5.0, color="red", linestyle="--", linewidth=1, label="target p50 (5 ms)")
    ax.set_xscale("log")
    ax.set_xlabel("round trip, ms (solid: submit + long-poll result; dashed: one-request call)")
    ax.set_ylabel("fraction of round trips")
    ax.set_title("Sequential no-op round trips (CDF)")
    ax.legend()
    return _save(fig, out / "latency.png")


def scaling(points: list[dict], out: Path) -> str | None:
    if not points:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for mode in sorted({p["mode"] for p in points}):
        for kind, style in (("sleep", "-o"), ("noop", "--s")):
            series = sorted((p for p in points if p["mode"] == mode and p["kind"] == kind),
                            key=lambda p: p["processes"])
            if not series:
                continue
            xs = [p["processes"] for p in series]
            label = f"{mode} {kind}"
            axes[0].plot(xs, [p["makespan_s"] for p in series], style, color=COLORS.get(mode), label=label)
            axes[1].plot(xs, [p["tasks_per_s"] for p in series], style, color=COLORS.get(mode), label=label)
            if kind == "sleep":
                axes[2].plot(xs, [100 * (p["efficiency_ideal"] or 0) for p in series], style, color=COLORS.get(mode),
                             label=f"{mode} sleep, vs ideal")
            else:
                axes[2].plot(xs, [100 * (p.get("efficiency_vs_1") or 0) for p in series], style,
                             color=COLORS.get(mode), alpha=0.6, label=f"{mode} no-op, vs 1 process")
    ideal = next((p["ideal_s"] for p in points if p["ideal_s"]), None)
    if ideal:
        axes[0].axhline(ideal, color="black", linewidth=1, label="ideal, sleep tasks")
    axes[2].axhline(90, color="red", linestyle="--", linewidth=1, label="target 90 %")
    for ax, title, ylabel in ((axes[0], "Makespan", "seconds"), (axes[1], "Throughput", "tasks/s"),
                              (axes[2], "Weak-scaling efficiency", "%")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p["processes"] for p in points}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("worker processes (10 tasks each)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    return _save(fig, out / "scaling.png")


def breakdown(rows: list[dict], out: Path) -> str | None:
    if not rows:
        return None
    stages = [name for name, _, _ in STAGES if name != "total"]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 2))
    labels = [f"{r['mode']}: {r['run']}" for r in rows]
    left = [0.0] * len(rows)
    cmap = plt.get_cmap("tab10")
    for i, stage in enumerate(stages):
        widths = [max(0.0, r["stages"][stage]["p50"]) if r["stages"][stage]["n"] else 0.0 for r in rows]
        ax.barh(labels, widths, left=left, color=cmap(i), label=stage)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("median milliseconds per stage")
    ax.set_title("Where the time goes (medians, stacked)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "breakdown.png")


def memory(mem: dict, out: Path) -> str | None:
    timeline = mem.get("timeline") or []
    if not timeline:
        return None
    t = [s[0] for s in timeline]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [s[1] for s in timeline], label="dispatcher RSS (MB)", color="tab:green")
    ax.plot(t, [s[2] for s in timeline], label="web RSS, all processes (MB)", color="tab:blue")
    ax.axhline(150, color="red", linestyle="--", linewidth=1, label="dispatcher target (150 MB)")
    ax.set_xlabel("seconds since the burst began")
    ax.set_ylabel("MB")
    depth = ax.twinx()
    depth.plot(t, [s[3] for s in timeline], color="grey", alpha=0.6, label="stream length")
    depth.set_ylabel("tasks in the stream")
    ax.legend(loc="upper left", fontsize=8)
    depth.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Burst of {mem.get('tasks')} tasks: memory and queue")
    return _save(fig, out / "memory.png")


def all_plots(results: dict, out: Path) -> dict[str, str | None]:
    return {"throughput": throughput(results.get("throughput", []), out),
            "latency": latency(results.get("latency", []), out),
            "scaling": scaling(results.get("scaling", []), out),
            "breakdown": breakdown(ordered(results.get("breakdown", []), results["meta"]["config"]["modes"]), out),
            "memory": memory(results.get("memory") or {}, out)}
