"""The Markdown report beside results.json: a summary against the targets, then one section
per measurement with its table and plot."""

from __future__ import annotations

import math
from pathlib import Path

from bench import plots, scaleout_report, targets
from bench.breakdown import STAGES, ordered

FLOOR_LABELS = {
    "redis_ping_ms": "Redis PING (redis-py, one connection)",
    "zmq_reqrep_ms": "ZeroMQ REQ/REP, 64 bytes, between two processes",
    "gunicorn_status_404_ms": "gunicorn: GET /status/<malformed> → 404 (DRF view), lean client",
    "gunicorn_status_404_sdk_ms": "gunicorn: GET /status/<malformed> → 404, the SDK's HTTP layer (urllib3)",
    "gunicorn_django_404_ms": "gunicorn: GET /no-such-path → 404 (Django only, no DRF), lean client",
    "daphne_status_404_ms": "daphne: GET /status/<malformed> → 404 (DRF view), lean client",
    "daphne_django_404_ms": "daphne: GET /no-such-path → 404 (Django only), lean client",
}


def f(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def image(name: str | None, alt: str) -> str:
    return f"\n![{alt}]({name})\n" if name else ""


def summary_section(results: dict) -> str:
    rows = results.get("targets") or targets.evaluate(results)
    level = results["meta"]["level"]
    caveat = "" if level == "full" else (
        f"\n**This is a `{level}` run**: fewer tasks than the issue specifies, so the figures are indicative only.\n")
    body = table(["target (push, 2 processes)", "goal", "measured", "verdict", "note"],
                 [[r["target"], r["goal"], f"{f(r['measured'])} {r['unit']}", f"**{r['verdict']}**", r["note"]]
                  for r in rows])
    missed = [r["target"] for r in rows if r["verdict"] != targets.MET]
    tail = f"\n\nMissed or not measured: {', '.join(missed)}." if missed else "\n\nEvery target met."
    return f"## Summary against the targets\n{caveat}\n{body}{tail}\n"


def errors_section(results: dict) -> str:
    if not results.get("errors"):
        return ""
    items = "\n".join(f"- **{e['section']}**: {e['error']}" for e in results["errors"])
    return f"## Sections that failed\n\n{items}\n\nTracebacks are in results.json.\n"


def userpath_section(results: dict) -> str:
    from bench.userpath import FIGURES, SYSTEMS

    up = results.get("userpath") or {}
    systems = up.get("systems") or {}
    if not systems:
        return "## The user's path, against Celery and Ray\n\nNot measured (see the failed sections).\n"
    present = [name for name in SYSTEMS if name in systems]
    header = ["figure"] + [systems[n].get("name") or n for n in present] + ["ours / Celery", "ours / Ray"]
    rows = []
    for key, (label, unit, better) in FIGURES.items():
        cells = []
        for name in present:
            figure = systems[name].get(key)
            digits = 0 if unit == "tasks/s" else 2 if unit == "ms" else 3
            cells.append("–" if not figure else f(figure["median"], digits) + (
                f" [{f(figure['min'], digits)}–{f(figure['max'], digits)}]" if figure["min"] != figure["max"] else ""))
        ratio = [up.get("ratios", {}).get(peer, {}).get(key) for peer in ("celery", "ray")]
        rows.append([f"{label} ({unit}, {better} is better)"] + cells + [f(r, 2) for r in ratio])
    errors = "".join(f"\n- **{systems[n].get('name') or n}**: {'; '.join(systems[n]['errors'])}"
                     for n in present if systems[n].get("errors"))
    sz = up.get("sizes", {})
    return (f"## The user's path, against Celery and Ray\n\nThe same workloads through each system's own client, "
            f"run as a program of its own: {sz.get('tasks')} no-op tasks per throughput figure, "
            f"{sz.get('round_trips')} sequential round trips, median [min–max] of {sz.get('passes')} pass(es). "
            f"The platform: push mode, 2 worker processes, gunicorn, results fetched through the API by the client "
            f"(`FaaSClient`, `FaaSExecutor`). Celery: prefork concurrency 2, Redis broker and result backend. "
            f"Ray: local, 2 CPUs. Ratios are ours divided by theirs (for ms and the sleep ratio, below 1 is "
            f"better).\n\n" + table(header, rows) + (f"\n\nErrors:{errors}" if errors else "") + "\n")


def floor_section(results: dict) -> str:
    floor = results.get("floor") or {}
    rows = [[FLOOR_LABELS.get(k, k), f(v["p50"], 3), f(v["p95"], 3), f(v["p99"], 3), v["n"]] for k, v in floor.items()]
    return ("## The floor on this machine\n\nThe cheapest round trips the platform is built from, measured in "
            "the same run.\n\n" + table(["round trip", "p50 ms", "p95 ms", "p99 ms", "samples"], rows) + "\n")


def throughput_section(results: dict, images: dict) -> str:
    rows = []
    for r in results.get("throughput", []):
        cpu = r["cpu_ms_per_task"]
        how = f"{r['clients']} clients" if r["style"] == "per-request" else f"{r['batch_size']} per request"
        rows.append([r["mode"], r["style"], r["server"], how, f"{r['completed']}/{r['tasks']}", r["failed"],
                     f(r["makespan_s"], 2), f"**{f(r['tasks_per_s'], 0)}**", f(r["submit_per_s"], 0),
                     f(r["request_ms"]["p50"]), f(r["request_ms"]["p95"]),
                     " / ".join(f(cpu.get(k), 2) for k in ("web", "dispatcher", "workers", "redis", "client")),
                     f(r.get("other_load_cores"), 2) + _busiest(r), "; ".join(r["errors"]) or ""])
    header = ["mode", "style", "server", "load", "completed", "failed", "makespan s", "tasks/s", "submitted/s",
              "request p50 ms", "request p95 ms", "CPU ms/task web / dispatcher / workers / redis / client",
              "other load, cores", "errors"]
    return ("## Throughput\n\nNo-op tasks end to end, from the first request to the last completion heard "
            "(completion observed through a Redis pattern subscription to the per-task done channels, not by "
            "polling the API). CPU is per completed task, summed over every process of each part (a process and "
            "its descendants); \"other load\" is CPU that processes outside the suite used during the run, in "
            "cores (the busiest named): above ~0.2 the run was disturbed.\n\n"
            + table(header, rows) + "\n" + image(images.get("throughput"), "throughput"))


def _busiest(run: dict) -> str:
    others = run.get("other_processes") or []
    return (" (" + ", ".join(f"{name} {cpu:g} s" for name, cpu in others) + ")") if others else ""


def latency_section(results: dict, images: dict) -> str:
    rows = [[r["mode"], r.get("style", "submit + result"), r["round_trips"], f"**{f(r['round_trip_ms']['p50'], 2)}**",
             f(r["round_trip_ms"]["p95"], 2), f(r["round_trip_ms"]["p99"], 2), f(r["round_trip_ms"]["max"], 2),
             f(r["submit_ms"]["p50"], 2), f(r["result_ms"]["p50"], 2), "; ".join(r["errors"])]
            for r in results.get("latency", [])]
    header = ["mode", "client calls", "round trips", "p50 ms", "p95 ms", "p99 ms", "max ms", "submit p50 ms",
              "result wait p50 ms", "errors"]
    return ("## Latency\n\nSequential no-op round trips through the SDK, each from a client process of its own: "
            "**submit + result** is `FaaSClient.submit` then `FaaSClient.result`, which long-polls "
            "`/result?wait=` (two requests; the target's measure); **call** is `FaaSClient.call`, one "
            "`POST /execute_function?wait=` that the server answers with the result.\n\n"
            + table(header, rows) + "\n" + image(images.get("latency"), "latency"))


def breakdown_section(results: dict, images: dict) -> str:
    names = [name for name, _, _ in STAGES]
    rows = []
    for r in ordered(results.get("breakdown", []), results["meta"]["config"]["modes"]):
        rows.append([f"{r['mode']}: {r['run']}"] + [
            f"{f(r['stages'][n]['p50'], 2)} / {f(r['stages'][n]['p95'], 2)}" for n in names])
    return ("## Where the time goes\n\nMedian / p95 milliseconds of each stage, from the timestamps every task "
            "records in its Redis hash plus the client's own clock (same machine, same clock). See "
            "docs/benchmark.md for what each stage covers.\n\n" + table(["run"] + names, rows) + "\n"
            + image(images.get("breakdown"), "breakdown"))


def scaling_section(results: dict, images: dict) -> str:
    rows = []
    for p in sorted(results.get("scaling", []), key=lambda p: (p["mode"], p["kind"], p["processes"])):
        rows.append([p["mode"], p["kind"], p["processes"], p["tasks"], f"{p['completed']}/{p['tasks']}",
                     f(p["makespan_s"], 3), f(p["tasks_per_s"], 0), f(p["ideal_s"], 2),
                     f(100 * p["efficiency_ideal"], 1) if p["efficiency_ideal"] else "–",
                     f(100 * p["efficiency_vs_1"], 1) if p.get("efficiency_vs_1") else "–",
                     "; ".join(p["errors"])])
    header = ["mode", "task", "processes", "tasks", "completed", "makespan s", "tasks/s", "ideal s",
              "efficiency vs ideal %", "efficiency vs 1 process %", "errors"]
    cfg = results["meta"]["config"]
    return (f"## Weak scaling\n\n{cfg['tasks_per_process']} tasks per worker process, queued in one "
            f"/execute_batch request; sleep tasks sleep {cfg['sleep_seconds']:g} s, so the ideal makespan is "
            f"{cfg['tasks_per_process'] * cfg['sleep_seconds']:g} s at every size. Median of "
            f"{cfg['scaling_repeats']} run(s) per point.\n\n" + table(header, rows) + "\n"
            + image(images.get("scaling"), "weak scaling"))


def memory_section(results: dict, images: dict) -> str:
    m = results.get("memory") or {}
    if not m:
        return "## Memory under a burst\n\nNot measured (see the failed sections).\n"
    d, w, s = m["dispatcher_rss_mb"], m["web_rss_mb"], m["status_ms"]
    rows = [["dispatcher RSS (main process)", f(d["before"]), f"**{f(d['peak'])}**", f(d["after"])],
            [f"web RSS ({m['web_processes']} gunicorn processes summed)", f(w["before"]), f(w["peak"]), f(w["after"])]]
    return (f"## Memory under a burst\n\n{m['tasks']} no-op tasks queued in batches of {m['batch_size']} while a "
            f"{m['mode']} dispatcher with {m['processes']} worker processes runs; RSS sampled every 0.1 s "
            f"(VmRSS from /proc). Peak stream length {m['peak_queue_length']:,}; the burst drained in "
            f"{f(m['makespan_s'], 2)} s ({f(m['tasks_per_s'], 0)} tasks/s), {m['completed']} completed, "
            f"{m['failed']} failed.\n\n"
            + table(["process", "before MB", "peak MB", "after MB"], rows)
            + f"\n\n`GET /status/<id>` while the burst drains (one client, {s['n']} requests): p50 "
              f"{f(s['p50'], 2)} ms, **p95 {f(s['p95'], 2)} ms**, p99 {f(s['p99'], 2)} ms, max {f(s['max'], 2)} ms."
            + (f" Errors: {'; '.join(m['status_errors'])}." if m.get("status_errors") else "") + "\n"
            + image(images.get("memory"), "memory"))


def compare_section(results: dict) -> str:
    cmp = results.get("compare") or {}
    if not cmp:
        return "## Compared with RQ and Celery\n\nNot measured (see the failed sections).\n"
    ours_tp = {(r["mode"], r["style"], r["server"]): r for r in results.get("throughput", [])}
    ours_lat = {(r["mode"], r.get("style", "submit + result")): r for r in results.get("latency", [])}
    rows = []
    per, batch, lat = ours_tp.get(("push", "per-request", "gunicorn")), ours_tp.get(("push", "batch", "gunicorn")), \
        ours_lat.get(("push", "submit + result"))
    call_p50 = (ours_lat.get(("push", "call")) or {}).get("round_trip_ms", {}).get("p50")
    if per or batch or lat:
        cpu = sum(v for k, v in per["cpu_s"].items() if k not in ("kernel_irq", "steal")) * 1000.0 / max(
            1, per["completed"]) if per else None
        ms = (lat or {}).get("round_trip_ms", {})
        rows.append(["**this platform, push mode** (2 worker processes)",
                     f"**{f(per['tasks_per_s'], 0)}**" if per else "–",
                     f"**{f(batch['tasks_per_s'], 0)}**" if batch else "–",
                     f(ms.get("p50"), 2) + (f" (one-request call: {f(call_p50, 2)})" if call_p50 else ""),
                     f(ms.get("p95"), 2), f(ms.get("p99"), 2), f(cpu, 2),
                     f"{per['completed']}/{per['tasks']}" if per else "–", ""])
    for s in cmp.get("systems", []):
        tp, bt, lt = s.get("throughput") or {}, s.get("batch") or {}, s.get("latency") or {}
        ms = lt.get("round_trip_ms", {})
        errors = list(s.get("errors", [])) + [e for part in (tp, bt, lt) for e in part.get("errors", [])]
        rows.append([s["system"], f(tp.get("tasks_per_s"), 0), f(bt.get("tasks_per_s"), 0) if bt else "n/a",
                     f(ms.get("p50"), 2), f(ms.get("p95"), 2), f(ms.get("p99"), 2),
                     f(tp.get("machine_cpu_ms_per_task"), 2), f"{tp['completed']}/{tp['tasks']}" if tp else "–",
                     "; ".join(errors)])
    header = ["system", "throughput, one call per task, tasks/s", "batched tasks/s", "latency p50 ms", "p95 ms",
              "p99 ms", "machine CPU ms/task (one call per task)", "completed", "errors"]
    setups = "\n".join(f"- **{s['system']}**: {s.get('setup', '?')}; batch: {s.get('batch_api', '?')}; "
                       f"completion: {s.get('result_api', '?')}" for s in cmp.get("systems", []))
    versions = ", ".join(f"{k} {v}" for k, v in cmp.get("versions", {}).items())
    return (f"## Compared with RQ and Celery\n\nThe same workload on the same machine ({versions}): "
            f"{cmp['tasks']} no-op tasks enqueued one call per task from {cmp['clients']} client threads, makespan "
            f"from the first enqueue to the last result seen; the same {cmp['tasks']} with the library's native "
            f"batch enqueue, {cmp['batch_size']} per call, from one client; {cmp['latency_round_trips']} sequential "
            f"enqueue + wait-for-result round trips. Each competitor has its own fresh redis-server (broker and "
            f"result store) and 2 worker processes, and runs after the platform is stopped. Each client thread "
            f"waits for its own tasks through the library's result API after enqueueing them. Our row is push "
            f"mode from this run's Throughput and Latency sections (HTTP through gunicorn, the SDK's long-poll). "
            f"Machine CPU is every process on the machine, the client included, per completed task.\n\n"
            + table(header, rows) + f"\n\n{setups}\n")


def profile_section(results: dict) -> str:
    prof = results.get("profile")
    if not prof:
        return ""
    parts = [f"## Profile (pyinstrument)\n\n{prof.get('note', '')}\n"]
    for name, text in prof.get("top", {}).items():
        parts.append(f"### {name}\n\n```\n{text}\n```\n")
    return "\n".join(parts)


def write_report(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = plots.all_plots(results, out)
    meta = results["meta"]
    load = " → ".join("/".join(f"{v:.2f}" for v in meta.get(k, [])) for k in ("load_before", "load_after"))
    head = (f"# Benchmark report\n\n`{meta.get('command')}` · level **{meta['level']}** · {meta['started']} · "
            f"{f(meta.get('duration_s'), 0)} s · Python {meta['python']} · {meta['cpus']} CPUs · "
            f"{meta['platform']} · code {meta.get('code', '?')} · load average before → after: {load}\n\n"
            f"Web server for the REST API: {meta.get('web', '?')}. Redis, web servers, "
            f"dispatchers and workers all run on this machine, beside the load generator. Raw figures: "
            f"results.json.\n")
    sections = [head, summary_section(results), errors_section(results), userpath_section(results),
                floor_section(results),
                throughput_section(results, images), latency_section(results, images),
                breakdown_section(results, images), scaling_section(results, images),
                scaleout_report.section(results, out),
                memory_section(results, images), compare_section(results), profile_section(results)]
    path = out / "report.md"
    path.write_text("\n".join(s for s in sections if s))
    return path
