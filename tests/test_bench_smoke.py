"""`python -m bench --quick --json` runs end to end and prints results of the documented shape.

No timing assertions: only that every figure was measured (a number, > 0 where it must be).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {"calls", "elapsed_s", "calls_per_s", "p50_ms", "p90_ms", "p99_ms",
                "server_cpu_us_per_call"}
LEVELS = {"1", "8", "32"}
ROW_KEYS = {"label", "value", "unit", "baseline_label", "baseline", "target", "met", "ratio"}
TARGETS = 11  # warm p50 x2, schema-heavy p50, throughput c=8 x2, cold x2, with dependencies x2
#               (warm, cold), server idle RSS, python worker RSS
GVISOR_TARGETS = 2  # gvisor warm p50 x2, beside the process backend's

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.xdist_group("bench"),  # one worker runs the bench (the module fixture) once
]


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets met:" in done.stderr  # the table goes to stderr when JSON takes stdout
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def check_summary(summary: dict[str, Any]) -> None:
    assert set(summary) == SUMMARY_KEYS
    for key in SUMMARY_KEYS - {"server_cpu_us_per_call"}:
        assert summary[key] > 0, key
    # CPU time comes in clock ticks (10 ms): a short quick run may see none
    assert summary["server_cpu_us_per_call"] >= 0


@pytest.mark.timeout(300)
def test_top_level(results: dict[str, Any]) -> None:
    assert set(results) - {"gvisor"} == {"machine", "plan", "mode", "echo", "pipe_floor",
                                         "bare_sandbox", "server", "cluster", "rows"}
    assert results["machine"]["backend"] == "process"
    assert isinstance(results["machine"]["python_shared"], bool)
    assert results["plan"]["latency_calls"] > 0


@pytest.mark.timeout(300)
def test_echo(results: dict[str, Any]) -> None:
    echo = results["echo"]
    assert echo["rss_idle_mb"] > 0
    check_summary(echo["latency"])
    assert set(echo["throughput"]) == LEVELS
    for summary in echo["throughput"].values():
        check_summary(summary)


@pytest.mark.timeout(300)
def test_pipe_floor(results: dict[str, Any]) -> None:
    """The echo plus a pipe round trip: its warm round trip (in the echo's rounds), and at 8
    connections with the doubler right after it."""
    floor = results["pipe_floor"]
    assert set(floor) == {"latency", "throughput", "server_throughput"}
    check_summary(floor["latency"])
    for levels in (floor["throughput"], floor["server_throughput"]):
        assert set(levels) == {"8"}
        check_summary(levels["8"])
    labels = [row["label"] for row in results["rows"]]
    assert "warm round trip p50, pipe floor (echo + a pipe round trip)" in labels
    assert "pipe floor c=8 (echo + a pipe round trip)" in labels
    assert "throughput c=8, doubler (right after it)" in labels


@pytest.mark.timeout(300)
def test_bare_sandbox(results: dict[str, Any]) -> None:
    assert set(results["bare_sandbox"]) == {"python", "javascript"}
    for bare in results["bare_sandbox"].values():
        assert bare["p50_ms"] > 0 and bare["idle_rss_mb"] > 0 and bare["idle_pss_mb"] > 0


@pytest.mark.timeout(300)
def test_server(results: dict[str, Any]) -> None:
    server = results["server"]
    for key in ("rss_idle_mb", "rss_load_peak_mb", "rss_after_load_mb"):
        assert server[key] > 0, key
    assert set(server["latency"]) == {"doubler", "doubler_js", "order_heavy",
                                        "order_noschema"}
    assert set(server["cold"]) == {"doubler_cold", "doubler_js_cold"}
    for summary in [*server["latency"].values(), *server["cold"].values()]:
        check_summary(summary)
    assert set(server["state"]) == {"embedded", "redis"}
    for store, summary in server["state"].items():
        if summary is not None or store == "embedded" or shutil.which("redis-server"):
            check_summary(summary)
    assert set(server["deps"]) == {"doubler", "doubler_deps", "doubler_cold", "doubler_deps_cold"}
    for summary in server["deps"].values():
        check_summary(summary)
    assert set(server["throughput"]) == {"doubler", "doubler_js"}
    for levels in server["throughput"].values():
        assert set(levels) == LEVELS
        for summary in levels.values():
            check_summary(summary)
    for language in ("python", "javascript"):
        workers = server["workers"][language]
        assert workers["count"] >= 1
        assert workers["rss_mb_each"] > 0 and workers["pss_mb_each"] > 0


@pytest.mark.timeout(300)
def test_each_warm_round_trip_makes_the_planned_calls_over_its_rounds(
        results: dict[str, Any]) -> None:
    plan = results["plan"]
    assert plan["latency_rounds"] >= 2
    warm = [results["echo"]["latency"], *results["server"]["latency"].values(),
            *results.get("gvisor", {}).get("latency", {}).values()]
    assert [summary["calls"] for summary in warm] == [plan["latency_calls"]] * len(warm)


@pytest.mark.timeout(300)
def test_cluster(results: dict[str, Any]) -> None:
    cluster = results["cluster"]
    check_summary(cluster["latency"]["doubler"])
    assert set(cluster["hop_ms"]) == {"p50", "p90", "p99"}
    assert all(isinstance(v, float | int) for v in cluster["hop_ms"].values())


@pytest.mark.timeout(300)
def test_rows(results: dict[str, Any]) -> None:
    rows = results["rows"]
    assert all(set(row) == ROW_KEYS for row in rows)
    # CPU per call may round to 0; the hop's cost is a difference, noise can make it <= 0
    assert all(row["value"] > 0 or row["unit"] == "us" or "hop" in row["label"]
               for row in rows)
    assert any(row["label"].startswith("cluster round trip p50") for row in rows)
    targets = [row for row in rows if row["met"] is not None]
    gvisor = results.get("gvisor", {}).get("available", False)
    assert len(targets) == TARGETS + (GVISOR_TARGETS if gvisor else 0)
    assert all(isinstance(row["met"], bool) and row["target"] for row in targets)


@pytest.mark.timeout(300)
def test_gvisor_beside_process(results: dict[str, Any]) -> None:
    """With runsc here, a gvisor server is measured in the same run; else the reason is said."""
    gvisor = results["gvisor"]
    if not gvisor["available"]:
        assert gvisor["reason"]
        return
    assert set(gvisor["latency"]) == {"doubler", "doubler_js"}
    assert set(gvisor["cold"]) == {"doubler_cold", "doubler_js_cold"}
    for summary in [*gvisor["latency"].values(), *gvisor["cold"].values()]:
        check_summary(summary)
    for levels in gvisor["throughput"].values():
        assert set(levels) == {"8"}
        check_summary(levels["8"])
    for language in ("python", "javascript"):
        workers = gvisor["workers"][language]
        assert workers["count"] >= 1 and workers["rss_mb_each"] > 0
    labels = [row["label"] for row in results["rows"]]
    assert "gvisor warm round trip p50, doubler" in labels


@pytest.mark.timeout(120)
def test_the_stall_benchmark_runs_every_case() -> None:
    """`python -m bench.stall`, small: a line per case, each call answered (no timing)."""
    done = subprocess.run([sys.executable, "-m", "bench.stall", "--items", "3000",
                           "--rounds", "1", "--connections", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("/healthz, idle: p50 ")
    cases = ["unevaluated_keys", "unique_floats", "unique_nested", "recursive_anyof",
             "big_integers"]
    assert [line.split()[0] for line in lines[1:-1]] == cases
    for line in lines[1:-1]:
        calls = line.split("calls: ")[1]
        assert sum(int(part.split()[0]) for part in calls.split(", ")) == 2, line
    # valid or refused as the schema says (no value this small runs out of time)
    assert lines[1].endswith("calls: 2 -32002 refused")
    assert lines[3].endswith("calls: 2 ok")
    assert lines[5].endswith("calls: 2 -32002 refused")
    assert lines[-1] in ("target met", "target NOT met")
