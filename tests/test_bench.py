"""The benchmark suite runs end to end in its smallest mode and writes every section.

Speed and memory targets belong in the benchmark's report, not here: nothing below asserts
a timing, only that each measurement was made and written down.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("## Summary against the targets", "## The user's path, against Celery and Ray",
            "## The floor on this machine", "## Throughput", "## Latency", "## Where the time goes",
            "## Weak scaling", "## Memory under a burst")
PLOTS = ("throughput.png", "latency.png", "scaling.png", "breakdown.png", "memory.png")


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, f"bench failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


@pytest.mark.timeout(480)
def test_report_has_every_section_and_plot(bench_out):
    report = (bench_out / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in report, f"{heading!r} missing from the report"
    for plot in PLOTS:
        assert (bench_out / plot).stat().st_size > 0, f"{plot} not written"
        assert f"]({plot})" in report, f"{plot} not linked from the report"


@pytest.mark.timeout(480)
def test_results_json_holds_every_figure(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    assert results["errors"] == []
    modes = results["meta"]["config"]["modes"]
    assert {"redis_ping_ms", "zmq_reqrep_ms", "gunicorn_status_404_ms"} <= results["floor"].keys()
    runs = {(r["mode"], r["style"], r["server"]) for r in results["throughput"]}
    assert {(m, s, "gunicorn") for m in modes for s in ("per-request", "batch")} <= runs
    assert all(r["completed"] == r["tasks"] for r in results["throughput"])
    assert {(r["mode"], r["style"]) for r in results["latency"]} == {(m, s) for m in modes
                                                                    for s in ("submit + result", "call")}
    assert all(r["round_trips"] > 0 and r["round_trip_ms"]["p50"] > 0 for r in results["latency"])
    stages = results["breakdown"][0]["stages"]
    assert all(stages[name]["n"] > 0 for name in ("web → queued", "queued → dispatched", "run", "total"))
    processes = results["meta"]["config"]["scaling_processes"]
    points = {(p["mode"], p["kind"], p["processes"]) for p in results["scaling"]}
    assert points == {(m, k, n) for m in modes for k in ("noop", "sleep") for n in processes}
    assert results["memory"]["completed"] == results["memory"]["tasks"]
    assert results["memory"]["dispatcher_rss_mb"]["peak"] > 0 and results["memory"]["status_ms"]["n"] > 0
    systems = results["userpath"]["systems"]
    assert set(systems) == {"platform", "celery", "ray"}
    for name, figures in systems.items():
        assert figures["errors"] == [], f"{name}: {figures['errors']}"
        assert figures["executor_tps"]["median"] > 0 and figures["round_trip_p50"]["median"] > 0
    assert results["userpath"]["ratios"]["ray"]["map_tps"] > 0
    assert [t["verdict"] for t in results["targets"]] and all(t["verdict"] in ("met", "NOT MET")
                                                              for t in results["targets"])
