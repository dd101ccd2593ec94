"""The scale-out part of the report: a table, and a plot of tasks/s against worker processes
with the hosts-and-dispatchers points beside the single-host per-process curve."""

from __future__ import annotations

from pathlib import Path

from bench.plots import COLORS, _save, plt

KIND_TITLES = {"sleep": "sleep task (weak scaling)", "noop": "no-op task (platform overhead)"}
DISPATCHER_STYLES = {1: "-o", 2: "--s"}


def plot(results: dict, out: Path) -> str | None:
    points = (results.get("scaleout") or {}).get("points") or []
    if not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("sleep", "noop")):
        single = sorted((p for p in results.get("scaling", []) if p["mode"] == "push" and p["kind"] == kind),
                        key=lambda p: p["processes"])
        if single:
            ax.plot([p["processes"] for p in single], [p["tasks_per_s"] for p in single], ":^", color="grey",
                    label="one host, push (per-process section)")
        for dispatchers, style in DISPATCHER_STYLES.items():
            series = sorted((p for p in points if p["kind"] == kind and p["dispatchers"] == dispatchers),
                            key=lambda p: p["hosts"])
            if series:
                ax.plot([p["processes"] for p in series], [p["tasks_per_s"] for p in series], style,
                        color=COLORS["push"] if dispatchers == 1 else "tab:red",
                        label=f"{dispatchers} dispatcher(s), 1–3 hosts × 2 processes")
                for p in series:
                    ax.annotate(f"{p['hosts']}h", (p["processes"], p["tasks_per_s"]), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))
        ax.set_xlabel("worker processes (all hosts)")
        ax.set_ylabel("tasks/s")
        ax.set_title(KIND_TITLES[kind])
        ax.legend(fontsize=7)
    return _save(fig, out / "scaleout.png")


def section(results: dict, out: Path) -> str:
    from bench.report import f, image, table

    scaleout = results.get("scaleout") or {}
    if scaleout.get("skipped"):
        return f"## Scale-out across hosts\n\nSkipped: {scaleout['skipped']}.\n"
    points = scaleout.get("points") or []
    if not points:
        return ""
    rows = [[p["dispatchers"], p["hosts"], p["processes"], p["kind"], p["tasks"], f(p["makespan_s"], 2),
             f(p["tasks_per_s"], 0), f(100 * p["efficiency_ideal"], 1) if p.get("efficiency_ideal") else "–",
             f(100 * p["efficiency_vs_1"], 1) if p.get("efficiency_vs_1") else "–",
             f"{p['completed']}/{p['tasks']}" + (f", {p['failed']} failed" if p["failed"] else "")]
            for p in sorted(points, key=lambda p: (p["kind"], p["dispatchers"], p["hosts"]))]
    header = ["dispatchers", "hosts", "processes", "task", "tasks", "makespan s", "tasks/s", "eff. vs ideal %",
              "per host vs 1 host %", "completed"]
    return (f"## Scale-out across hosts\n\n`make cluster`'s layout: {scaleout.get('database')}, Redis "
            f"{scaleout.get('redis')}, gunicorn, push dispatchers with CURVE on a private LAN, each worker host "
            f"a network namespace with {scaleout.get('processes_per_host')} processes; host i works for "
            "dispatcher i mod the number of dispatchers. All hosts share this machine's CPUs: the sleep task "
            "shows what each host costs the platform, the no-op task the shared CPU's ceiling.\n\n"
            + table(header, rows) + "\n" + image(plot(results, out), "scale-out"))
