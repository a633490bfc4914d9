"""One benchmark run: the echo baseline, the bare sandbox floor, then the real server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import cluster, floor, procs, servers, state
from bench.load import CallSpec, Stats, Target, run_calls, run_interleaved
from service.manifest.loader import load_manifest
from service.sandbox.staging import Stager
from service.settings import Settings, load_settings

log = logging.getLogger(__name__)

WARM_ACTORS = {"python": "doubler", "javascript": "doubler_js"}
COLD_ACTORS = {"python": "doubler_cold", "javascript": "doubler_js_cold"}
SCHEMA_ACTOR = "order_heavy"  # bench/actors: a 50-line order through nested, $ref'd schemas
NO_SCHEMA_ACTOR = "order_noschema"  # the same payload and script, schema `true`
# With a dependency set (bench/actors/doubler_deps*.yaml) -> the same actor without one.
DEPS_PAIRS = {"doubler_deps": "doubler", "doubler_deps_cold": "doubler_cold"}
LEVELS = (1, 8, 32)
GVISOR_LEVEL = "8"  # the one throughput level measured on gVisor too
PIPE_FLOOR_LEVEL = 8  # the one throughput level of the pipe floor (bench/pipe_floor.py)
SAMPLE_EVERY_S = 0.05
MODE = "closed loop: each connection makes one call at a time, no pipelining"


@dataclass(frozen=True)
class Plan:
    """How much to measure; every count and duration is bounded."""

    latency_calls: int = 2000
    latency_warmup_calls: int = 200
    latency_rounds: int = 10  # the warm round trips of all servers and actors, interleaved
    throughput_s: float = 3.0
    throughput_warmup_s: float = 1.0
    cold_calls: int = 40
    cold_warmup_calls: int = 3
    bare_starts: int = 40
    levels: tuple[int, ...] = LEVELS


QUICK = Plan(latency_calls=40, latency_warmup_calls=10, latency_rounds=2, throughput_s=0.3,
             throughput_warmup_s=0.2, cold_calls=4, cold_warmup_calls=1, bare_starts=4)


async def run(plan: Plan, config: Path, backend: str, gvisor: bool = True) -> dict[str, Any]:
    """Measure everything; the results as plain JSON-able data (see bench/README.md).

    The echo server and the real one run side by side, and each figure is taken right
    after its baseline (the warm round trips in interleaved rounds), so that other work on
    the machine skews both alike. With
    ``gvisor`` (and the process backend), a third server on the gvisor backend runs
    beside them, each of its figures taken right after the process backend's.
    """
    settings = load_settings(config)
    load_before = os.getloadavg()[0]
    echo_port, server_port = servers.free_port(), servers.free_port()
    compare = gvisor and backend == "process"
    # the echo runs on the server's event loop: the same busy polling (see service.eventloop)
    echo_command = servers.echo_command(echo_port, settings.busy_poll_us)
    floor_port = servers.free_port()
    floor_command = servers.echo_command(floor_port, settings.busy_poll_us, "bench.pipe_floor")
    async with servers.running(echo_command, echo_port, "echo") as echo, \
            servers.running(floor_command, floor_port, "pipe-floor") as pipe_floor, \
            servers.running(servers.server_command(server_port, config, backend), server_port,
                            "server") as server, \
            _gvisor_server(config, settings, compare) as (gv, gv_results):
        results: dict[str, Any] = {"echo": {"rss_idle_mb": _mb(procs.rss_bytes(echo.pid))},
                                   "server": {"rss_idle_mb": _mb(procs.rss_bytes(server.pid))},
                                   "pipe_floor": {}}
        if compare:
            results["gvisor"] = gv_results
        log.info("warm round trips")
        await _latencies(plan, echo, server, results, gv, pipe_floor)
        log.info("round trip through a cluster front and one worker")
        results["cluster"] = await _cluster(plan, config, backend, results["server"])
        log.info("warm calls with one state increment")
        results["server"]["state"] = await state.measure(
            server, config, backend, plan.latency_calls, plan.latency_warmup_calls)
        log.info("throughput")
        await _throughputs(plan, echo, server, results, gv)
        results["pipe_floor"] |= await _pipe_floor(plan, pipe_floor, server)
        results["server"]["workers"] = _workers(server.pid)
        if gv is not None:
            gv_results["workers"] = _gvisor_workers(gv.pid)
        results["server"]["rss_after_load_mb"] = _mb(procs.rss_bytes(server.pid))
        log.info("cold calls and bare sandboxes")
        results["bare_sandbox"] = {}
        results["server"]["cold"] = {}
        for language, actor_id in COLD_ACTORS.items():
            results["bare_sandbox"][language] = await _bare(plan, settings, actor_id)
            results["server"]["cold"][actor_id] = await _sequential(
                server, actor_id, plan.cold_calls, plan.cold_warmup_calls)
            if gv is not None:
                gv_results["cold"][actor_id] = await _sequential(
                    gv, actor_id, plan.cold_calls, plan.cold_warmup_calls)
        log.info("calls with and without dependencies")
        results["server"]["deps"] = await _with_and_without_deps(plan, server)
    machine = {**_machine(backend), "busy_poll_us": settings.busy_poll_us,
               "loadavg_1m_before": round(load_before, 2),
               "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    return {"machine": machine, "plan": asdict(plan), "mode": MODE, **results}


def _machine(backend: str) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "python_shared": _libpython_loaded(),
            "kernel": platform.release(), "backend": backend}


def _libpython_loaded() -> bool:
    """Whether this interpreter runs from a shared libpython (pyenv's default build: no PGO,
    position-independent; it ran the server ~15% slower than Debian's static python3)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return "libpython" in maps.read()


@contextlib.asynccontextmanager
async def _gvisor_server(config: Path, settings: Settings, wanted: bool
                         ) -> AsyncIterator[tuple[servers.Running | None, dict[str, Any]]]:
    """A server on the gvisor backend when ``wanted`` and runsc works here, else None (the
    results then say why)."""
    if not wanted:
        yield None, {}
        return
    from service.sandbox.gvisor import GVisorBackend

    backend = GVisorBackend(settings)
    try:
        available = await backend.availability()
    finally:
        await backend.aclose()
    if not available.ok:
        log.warning("no gvisor rows: %s", available.reason)
        yield None, {"available": False, "reason": available.reason}
        return
    port = servers.free_port()
    async with servers.running(servers.server_command(port, config, "gvisor"), port,
                               "gvisor") as gv:
        yield gv, {"available": True, "platform": available.details.get("platform"),
                   "runsc": available.details.get("runsc"), "latency": {},
                   "throughput": {actor_id: {} for actor_id in WARM_ACTORS.values()},
                   "cold": {}}


async def _latencies(plan: Plan, echo: servers.Running, server: servers.Running,
                     results: dict[str, Any], gv: servers.Running | None,
                     pipe_floor: servers.Running) -> None:
    """The warm round trips of the echo, of the pipe floor and of each actor (on gVisor too),
    in interleaved rounds (see run_interleaved): each ratio compares figures taken over the
    same minutes."""
    heavy = heavy_order_call()
    runs = {("echo", "doubler"): Target(echo.url, "doubler", echo.pid),
            ("pipe_floor", "doubler"): Target(pipe_floor.url, "doubler", pipe_floor.pid)}
    for actor_id in WARM_ACTORS.values():
        runs["server", actor_id] = Target(server.url, actor_id, server.pid)
        if gv is not None:
            runs["gvisor", actor_id] = Target(gv.url, actor_id, gv.pid)
    for actor_id in (SCHEMA_ACTOR, NO_SCHEMA_ACTOR):
        runs["server", actor_id] = Target(server.url, actor_id, server.pid, heavy)
    measured = await run_interleaved(list(runs.values()), calls=plan.latency_calls,
                                     warmup_calls=plan.latency_warmup_calls,
                                     rounds=plan.latency_rounds)
    results["server"]["latency"] = {}
    for (where, actor_id), stats in zip(runs, measured, strict=True):
        if where in ("echo", "pipe_floor"):
            results[where]["latency"] = stats.summary()
        else:
            results[where]["latency"][actor_id] = stats.summary()


async def _cluster(plan: Plan, config: Path, backend: str,
                   single: dict[str, Any]) -> dict[str, Any]:
    """The doubler's round trip through Redis, a front and a worker; the hop's cost per call
    is its difference with the single-machine round trip measured just before."""
    async with cluster.running(config, backend) as front:
        stats = await _sequential(front, "doubler", plan.latency_calls,
                                  plan.latency_warmup_calls)
    base = single["latency"]["doubler"]
    return {"latency": {"doubler": stats},
            "hop_ms": {p: round(stats[f"{p}_ms"] - base[f"{p}_ms"], 3)
                       for p in ("p50", "p90", "p99")}}


async def _throughputs(plan: Plan, echo: servers.Running, server: servers.Running,
                       results: dict[str, Any], gv: servers.Running | None) -> None:
    results["echo"]["throughput"] = {}
    results["server"]["throughput"] = {actor_id: {} for actor_id in WARM_ACTORS.values()}
    peak = 0
    for level in plan.levels:
        stats, _ = await _throughput(echo, "doubler", level, plan)
        results["echo"]["throughput"][str(level)] = stats
        for actor_id in WARM_ACTORS.values():
            stats, level_peak = await _throughput(server, actor_id, level, plan)
            results["server"]["throughput"][actor_id][str(level)] = stats
            peak = max(peak, level_peak)
            if gv is not None and str(level) == GVISOR_LEVEL:
                stats, _ = await _throughput(gv, actor_id, level, plan)
                results["gvisor"]["throughput"][actor_id][str(level)] = stats
    results["server"]["rss_load_peak_mb"] = _mb(peak)


async def _pipe_floor(plan: Plan, pipe_floor: servers.Running,
                      server: servers.Running) -> dict[str, Any]:
    """The echo plus a pipe round trip (bench/pipe_floor.py) at the target level, and the
    doubler right after it: the service's own work per call is the difference."""
    stats, _ = await _throughput(pipe_floor, "doubler", PIPE_FLOOR_LEVEL, plan)
    again, _ = await _throughput(server, "doubler", PIPE_FLOOR_LEVEL, plan)
    return {"throughput": {str(PIPE_FLOOR_LEVEL): stats},
            "server_throughput": {str(PIPE_FLOOR_LEVEL): again}}


async def _with_and_without_deps(plan: Plan, server: servers.Running) -> dict[str, Any]:
    """Each actor with dependencies right after the same actor without (warm, then cold)."""
    out: dict[str, Any] = {}
    for with_deps, without in DEPS_PAIRS.items():
        cold = "cold" in with_deps
        calls = plan.cold_calls if cold else plan.latency_calls
        warmup = plan.cold_warmup_calls if cold else plan.latency_warmup_calls
        for actor_id in (without, with_deps):
            out[actor_id] = await _sequential(server, actor_id, calls, warmup)
    return out


async def _bare(plan: Plan, settings: Settings, actor_id: str) -> dict[str, Any]:
    """Bare bwrap + interpreter starts with the sandbox options of ``actor_id``."""
    actor = load_manifest(servers.BENCH_ACTORS / f"{actor_id}.yaml", settings)
    stager = Stager()
    try:
        sandbox = floor.bare_sandbox(actor, settings, stager)
        await floor.start_once(sandbox)  # the first start reads the interpreter from disk
        times = [await floor.start_once(sandbox) for _ in range(plan.bare_starts)]
        rss, pss = await floor.idle_footprint(sandbox)
    finally:
        stager.close()
    return {**Stats(len(times), sum(times) / 1000, tuple(times)).summary(),
            "idle_rss_mb": _mb(rss), "idle_pss_mb": _mb(pss)}


def heavy_order_call(lines: int = 50) -> CallSpec:
    """The schema-heavy actor's call: an order of ``lines`` lines, and its item count."""
    order = {
        "id": "A-1001",
        "customer": {"name": "Ada", "email": "ada@example.com",
                     "address": {"street": "Main 1", "city": "Berlin", "zip": "10115",
                                 "country": "DE"}},
        "lines": [{"sku": f"sku-{i}", "quantity": 1 + i % 3, "unit_price": 2.5,
                   "dims": {"w": 10, "h": 2.5, "d": 1}, "tags": ["a", f"t{i}"]}
                  for i in range(lines)],
        "notes": ["leave at the door"],
    }
    return CallSpec(order, sum(line["quantity"] for line in order["lines"]))


async def _sequential(server: servers.Running, actor_id: str, calls: int,
                      warmup_calls: int, call: CallSpec | None = None) -> dict[str, Any]:
    """One connection, ``calls`` calls one after another (after ``warmup_calls``)."""
    stats = await run_calls(server.url, actor_id, connections=1, calls=calls,
                            warmup_calls=warmup_calls, server_pid=server.pid, call=call)
    return stats.summary()


async def _throughput(server: servers.Running, actor_id: str, level: int,
                      plan: Plan) -> tuple[dict[str, Any], int]:
    """Calls/s at ``level`` connections (with the server's CPU per call), and its peak RSS."""
    async with _rss_peak(server.pid) as peak:
        stats = await run_calls(server.url, actor_id, connections=level,
                                duration_s=plan.throughput_s, warmup_s=plan.throughput_warmup_s,
                                server_pid=server.pid)
    return stats.summary(), peak[0]


@contextlib.asynccontextmanager
async def _rss_peak(pid: int) -> AsyncIterator[list[int]]:
    """Sample ``pid``'s RSS while the block runs; the peak ends up in the yielded list."""
    peak = [procs.rss_bytes(pid)]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], procs.rss_bytes(pid))
            await asyncio.sleep(SAMPLE_EVERY_S)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peak[0] = max(peak[0], procs.rss_bytes(pid))


def _workers(server_pid: int) -> dict[str, Any]:
    """Warm workers (the server's child sandboxes) by language: count, RSS and PSS each."""
    trees = procs.child_trees(server_pid)
    out: dict[str, Any] = {}
    for language, marker in (("python", "harness.py"), ("javascript", "harness.js")):
        mine = [t for t in trees if t.runs(marker)]
        rss, pss = procs.total(mine)
        count = len(mine)
        out[language] = {"count": count, "rss_mb_each": _mb(rss / count) if count else 0.0,
                         "pss_mb_each": _mb(pss / count) if count else 0.0}
    return out


def _gvisor_workers(server_pid: int) -> dict[str, Any]:
    """Warm gVisor workers by language: each is a runsc tree (runsc, the gofer, the Sentry,
    its ptrace stubs), its language read from the bundle's config.json."""
    out: dict[str, Any] = {}
    trees = procs.child_trees(server_pid)
    for language, marker in (("python", "harness.py"), ("javascript", "harness.js")):
        mine = [t for t in trees if marker in procs.bundle_command(t.root)]
        rss, pss = procs.total(mine)
        count = len(mine)
        out[language] = {"count": count, "rss_mb_each": _mb(rss / count) if count else 0.0,
                         "pss_mb_each": _mb(pss / count) if count else 0.0}
    return out


def _mb(size: float) -> float:
    return round(size / procs.MIB, 2)
