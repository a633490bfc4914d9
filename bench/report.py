"""The table and the targets: every figure beside its baseline and their ratio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.runner import (
    COLD_ACTORS,
    DEPS_PAIRS,
    GVISOR_LEVEL,
    NO_SCHEMA_ACTOR,
    PIPE_FLOOR_LEVEL,
    SCHEMA_ACTOR,
    WARM_ACTORS,
)

WARM_P50_MAX_RATIO = 2.5  # warm round trip p50 <= 2.5x the echo's (issue 12)
THROUGHPUT_MIN_RATIO = 0.25  # at concurrency 8: >= 25% of the echo's calls/s (issue 12)
THROUGHPUT_TARGET_LEVEL = "8"
SCHEMA_P50_MAX_RATIO = 1.15  # the schema-heavy actor's warm p50 <= 1.15x the doubler's
COLD_MAX_RATIO = 1.5  # cold call p50 <= 1.5x a bare bwrap + interpreter start
SERVER_IDLE_RSS_MAX_MB = 60.0
PYTHON_WORKER_RSS_MAX_MB = 15.0
GVISOR_WARM_P50_MAX_RATIO = 1.3  # gvisor warm round trip p50 <= 1.3x the process backend's
DEPS_MAX_RATIO = 1.25  # p50 with a dependency set mounted <= 1.25x the same actor without


@dataclass(frozen=True)
class Row:
    """One line of the table; ``met`` is None where no target applies."""

    label: str
    value: float
    unit: str
    baseline_label: str
    baseline: float
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the table, in order."""
    return [*_latency_rows(results), *_state_rows(results), *_cluster_rows(results),
            *_throughput_rows(results), *_pipe_floor_rows(results), *_cold_rows(results),
            *_deps_rows(results), *_memory_rows(results), *_gvisor_rows(results)]


def _cluster_rows(results: dict[str, Any]) -> list[Row]:
    """The round trip through Redis, a front and a worker, beside the single-machine one."""
    if "cluster" not in results:
        return []
    single = results["server"]["latency"]["doubler"]
    stats, hop = results["cluster"]["latency"]["doubler"], results["cluster"]["hop_ms"]
    out = [Row(f"cluster round trip {p}, doubler (front+worker)", stats[f"{p}_ms"], "ms",
               f"one machine {p}", single[f"{p}_ms"]) for p in ("p50", "p90", "p99")]
    out.append(Row("  cost of the cluster hop per call (p50)", hop["p50"], "ms",
                   "one machine p50", single["p50_ms"]))
    return out


def _latency_rows(results: dict[str, Any]) -> list[Row]:
    echo = results["echo"]["latency"]
    out = []
    if "latency" in results.get("pipe_floor", {}):  # runs before it was added have none
        # what a process per sandbox costs any design, before any work of the service's
        out.append(Row("warm round trip p50, pipe floor (echo + a pipe round trip)",
                       results["pipe_floor"]["latency"]["p50_ms"], "ms", "echo p50",
                       echo["p50_ms"]))
    for language, actor_id in WARM_ACTORS.items():
        stats = results["server"]["latency"][actor_id]
        for p in ("p50", "p90", "p99"):
            key = f"{p}_ms"
            row = Row(f"warm round trip {p}, {actor_id} ({language})", stats[key], "ms",
                      f"echo {p}", echo[key])
            if p == "p50":
                row = _ratio_target(row, WARM_P50_MAX_RATIO, max_ratio=True)
            out.append(row)
    latency = results["server"]["latency"]
    if SCHEMA_ACTOR in latency:  # results of runs before it was added have none
        row = Row(f"warm round trip p50, {SCHEMA_ACTOR} (schema-heavy)",
                  latency[SCHEMA_ACTOR]["p50_ms"], "ms", "doubler p50",
                  latency[WARM_ACTORS["python"]]["p50_ms"])
        out.append(_ratio_target(row, SCHEMA_P50_MAX_RATIO, max_ratio=True))
        out.append(Row(f"  same payload, no schema ({NO_SCHEMA_ACTOR})",
                       latency[SCHEMA_ACTOR]["p50_ms"], "ms", f"{NO_SCHEMA_ACTOR} p50",
                       latency[NO_SCHEMA_ACTOR]["p50_ms"]))
    return out


def _state_rows(results: dict[str, Any]) -> list[Row]:
    """A warm call doing one increment, per store, beside the plain warm call (same actor
    code but the increment)."""
    plain = results["server"]["latency"][WARM_ACTORS["python"]]["p50_ms"]
    out = []
    for store, stats in results["server"].get("state", {}).items():
        if stats is not None:
            out.append(Row(f"warm call + 1 increment p50, {store}", stats["p50_ms"], "ms",
                           "warm round trip p50", plain))
    return out


def _throughput_rows(results: dict[str, Any]) -> list[Row]:
    echo = results["echo"]["throughput"]
    out = []
    for actor_id in WARM_ACTORS.values():
        for level, stats in results["server"]["throughput"][actor_id].items():
            row = Row(f"throughput c={level}, {actor_id}", stats["calls_per_s"], "calls/s",
                      f"echo c={level}", echo[level]["calls_per_s"])
            if level == THROUGHPUT_TARGET_LEVEL:
                row = _ratio_target(row, THROUGHPUT_MIN_RATIO, max_ratio=False)
            out.append(row)
            out.append(Row(f"  server CPU per call c={level}, {actor_id}",
                           stats["server_cpu_us_per_call"], "us", f"echo c={level}",
                           echo[level]["server_cpu_us_per_call"]))
    return out


def _pipe_floor_rows(results: dict[str, Any]) -> list[Row]:
    """The echo plus a pipe round trip to a child (no sandbox, no checks), and the doubler
    measured right after it: how much of the gap to the echo is the service's own work."""
    if "pipe_floor" not in results:
        return []
    level = str(PIPE_FLOOR_LEVEL)
    floor = results["pipe_floor"]["throughput"][level]
    server = results["pipe_floor"]["server_throughput"][level]
    echo = results["echo"]["throughput"][level]["calls_per_s"]
    return [
        Row(f"pipe floor c={level} (echo + a pipe round trip)", floor["calls_per_s"],
            "calls/s", f"echo c={level}", echo),
        Row(f"throughput c={level}, doubler (right after it)", server["calls_per_s"],
            "calls/s", f"pipe floor c={level}", floor["calls_per_s"]),
        Row(f"  server CPU per call c={level}, doubler", server["server_cpu_us_per_call"],
            "us", f"pipe floor c={level}", floor["server_cpu_us_per_call"]),
    ]


def _cold_rows(results: dict[str, Any]) -> list[Row]:
    out = []
    for language, actor_id in COLD_ACTORS.items():
        row = Row(f"cold call p50, {actor_id}", results["server"]["cold"][actor_id]["p50_ms"],
                  "ms", f"bare bwrap+{language} p50", results["bare_sandbox"][language]["p50_ms"])
        out.append(_ratio_target(row, COLD_MAX_RATIO, max_ratio=True))
    return out


def _deps_rows(results: dict[str, Any]) -> list[Row]:
    deps = results["server"]["deps"]
    out = []
    for with_deps, without in DEPS_PAIRS.items():
        kind = "cold call" if "cold" in with_deps else "warm round trip"
        row = Row(f"{kind} p50, {with_deps} (dependencies)", deps[with_deps]["p50_ms"], "ms",
                  f"{without} (none) p50", deps[without]["p50_ms"])
        out.append(_ratio_target(row, DEPS_MAX_RATIO, max_ratio=True))
    return out


def _memory_rows(results: dict[str, Any]) -> list[Row]:
    server, echo_rss = results["server"], results["echo"]["rss_idle_mb"]
    out = [
        _limit(Row("server RSS idle", server["rss_idle_mb"], "MB", "echo RSS idle", echo_rss),
               SERVER_IDLE_RSS_MAX_MB),
        Row("server RSS under load (peak)", server["rss_load_peak_mb"], "MB", "echo RSS idle",
            echo_rss),
        Row("server RSS after load", server["rss_after_load_mb"], "MB", "echo RSS idle", echo_rss),
    ]
    for language in WARM_ACTORS:
        workers, bare = server["workers"][language], results["bare_sandbox"][language]
        label = f"RSS per warm {language} worker (n={workers['count']})"
        rss = Row(label, workers["rss_mb_each"], "MB", "bare idle sandbox", bare["idle_rss_mb"])
        out.append(_limit(rss, PYTHON_WORKER_RSS_MAX_MB) if language == "python" else rss)
        out.append(Row(f"PSS per warm {language} worker", workers["pss_mb_each"], "MB",
                       "bare idle sandbox", bare["idle_pss_mb"]))
    return out


def _gvisor_rows(results: dict[str, Any]) -> list[Row]:
    """The gvisor server's figures, each beside the process backend's of the same run."""
    gv, server = results.get("gvisor") or {}, results["server"]
    if not gv.get("available"):
        return []
    out = []
    for language, actor_id in WARM_ACTORS.items():
        row = Row(f"gvisor warm round trip p50, {actor_id}", gv["latency"][actor_id]["p50_ms"],
                  "ms", "process p50", server["latency"][actor_id]["p50_ms"])
        out.append(_ratio_target(row, GVISOR_WARM_P50_MAX_RATIO, max_ratio=True))
        level = GVISOR_LEVEL
        out.append(Row(f"gvisor throughput c={level}, {actor_id}",
                       gv["throughput"][actor_id][level]["calls_per_s"], "calls/s",
                       f"process c={level}", server["throughput"][actor_id][level]["calls_per_s"]))
        cold_id = COLD_ACTORS[language]
        out.append(Row(f"gvisor cold call p50, {cold_id}", gv["cold"][cold_id]["p50_ms"], "ms",
                       "process cold p50", server["cold"][cold_id]["p50_ms"]))
        workers, process = gv["workers"][language], server["workers"][language]
        out.append(Row(f"gvisor RSS per warm {language} worker (n={workers['count']})",
                       workers["rss_mb_each"], "MB", "process worker", process["rss_mb_each"]))
        out.append(Row(f"gvisor PSS per warm {language} worker", workers["pss_mb_each"], "MB",
                       "process worker", process["pss_mb_each"]))
    return out


def _ratio_target(row: Row, bound: float, *, max_ratio: bool) -> Row:
    if max_ratio:
        return _with(row, f"<= {bound:g}x", lambda r: r.ratio <= bound)
    return _with(row, f">= {bound:g}x", lambda r: r.ratio >= bound)


def _limit(row: Row, max_value: float) -> Row:
    return _with(row, f"<= {max_value:g} {row.unit}", lambda r: r.value <= max_value)


def _with(row: Row, target: str, test: Callable[[Row], bool]) -> Row:
    return Row(row.label, row.value, row.unit, row.baseline_label, row.baseline, target,
               test(row))


def _build(machine: dict[str, Any]) -> str:
    return " (shared libpython)" if machine.get("python_shared") else ""


def table(results: dict[str, Any]) -> str:
    """The human-readable table of ``results``."""
    machine = results["machine"]
    gv = results.get("gvisor") or {}
    beside = (f"; gvisor beside it (runsc {gv.get('runsc')}, {gv.get('platform')})"
              if gv.get("available") else
              f"; no gvisor rows: {gv['reason']}" if "reason" in gv else "")
    lines = [f"backend {machine['backend']}{beside}, {machine['cpus']} CPUs, "
             f"Python {machine['python']}{_build(machine)}, kernel {machine['kernel']}, "
             f"busy poll {machine.get('busy_poll_us', 0)} µs (server and echo), "
             f"load average {machine['loadavg_1m_before']} before, "
             f"{machine['loadavg_1m_after']} after; {results['mode']}",
             f"{'figure':44} {'value':>16}  {'baseline':>38}  {'ratio':>7}  target"]
    for row in rows(results):
        verdict = {None: "", True: "met", False: "NOT MET"}[row.met]
        value = f"{_number(row.value)} {row.unit}"
        baseline = f"{row.baseline_label} {_number(row.baseline)} {row.unit}"
        lines.append(f"{row.label:44} {value:>16}  {baseline:>38}  {row.ratio:>6.2f}x  "
                     f"{row.target} {verdict}".rstrip())
    met = [row for row in rows(results) if row.met is not None]
    lines.append(f"targets met: {sum(bool(r.met) for r in met)} of {len(met)}")
    return "\n".join(lines)


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"
