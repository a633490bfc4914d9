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

from bench import floor, procs, servers
from bench.load import Stats, run_calls
from service.manifest.loader import load_manifest
from service.settings import load_settings

log = logging.getLogger(__name__)

WARM_ACTORS = {"python": "doubler", "javascript": "doubler_js"}
COLD_ACTORS = {"python": "doubler_cold", "javascript": "doubler_js_cold"}
LEVELS = (1, 8, 32)
SAMPLE_EVERY_S = 0.05
MODE = "closed loop: each connection makes one call at a time, no pipelining"


@dataclass(frozen=True)
class Plan:
    """How much to measure; every count and duration is bounded."""

    latency_calls: int = 2000
    latency_warmup_calls: int = 200
    throughput_s: float = 3.0
    throughput_warmup_s: float = 1.0
    cold_calls: int = 40
    cold_warmup_calls: int = 3
    bare_starts: int = 40
    levels: tuple[int, ...] = LEVELS


QUICK = Plan(latency_calls=40, latency_warmup_calls=10, throughput_s=0.3,
             throughput_warmup_s=0.2, cold_calls=4, cold_warmup_calls=1, bare_starts=4)


async def run(plan: Plan, config: Path, backend: str) -> dict[str, Any]:
    """Measure everything; the results as plain JSON-able data (see bench/README.md)."""
    settings = load_settings(config)
    log.info("echo baseline")
    echo = await _echo(plan)
    log.info("bare sandbox floor")
    bare = await _bare(plan, settings)
    log.info("server (%s backend)", backend)
    server = await _server(plan, config, backend)
    return {"machine": _machine(backend), "plan": asdict(plan), "mode": MODE,
            "echo": echo, "bare_sandbox": bare, "server": server}


def _machine(backend: str) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "backend": backend}


# --- the echo baseline -------------------------------------------------------------------


async def _echo(plan: Plan) -> dict[str, Any]:
    port = servers.free_port()
    async with servers.running(servers.echo_command(port), port, "echo") as echo:
        rss_idle = procs.rss_bytes(echo.pid)
        latency = await _sequential(echo, "doubler", plan.latency_calls,
                                    plan.latency_warmup_calls)
        throughput = {}
        for level in plan.levels:
            stats, _ = await _throughput(echo, "doubler", level, plan)
            throughput[str(level)] = stats
    return {"rss_idle_mb": _mb(rss_idle), "latency": latency, "throughput": throughput}


# --- the bare sandbox floor --------------------------------------------------------------


async def _bare(plan: Plan, settings: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for language, actor_id in COLD_ACTORS.items():
        actor = load_manifest(servers.BENCH_ACTORS / f"{actor_id}.yaml", settings)
        sandbox = floor.bare_sandbox(actor, settings)
        await floor.start_once(sandbox)  # first start: page cache
        times = [await floor.start_once(sandbox) for _ in range(plan.bare_starts)]
        rss, pss = await floor.idle_footprint(sandbox)
        out[language] = {**Stats(len(times), sum(times) / 1000, tuple(times)).summary(),
                         "idle_rss_mb": _mb(rss), "idle_pss_mb": _mb(pss)}
    return out


# --- the real server ---------------------------------------------------------------------


async def _server(plan: Plan, config: Path, backend: str) -> dict[str, Any]:
    port = servers.free_port()
    command = servers.server_command(port, config, backend)
    async with servers.running(command, port, "server") as server:
        rss_idle = procs.rss_bytes(server.pid)
        latency = {a: await _sequential(server, a, plan.latency_calls, plan.latency_warmup_calls)
                   for a in WARM_ACTORS.values()}
        throughput: dict[str, dict[str, Any]] = {}
        peak = 0
        for actor_id in WARM_ACTORS.values():
            throughput[actor_id] = {}
            for level in plan.levels:
                stats, level_peak = await _throughput(server, actor_id, level, plan)
                throughput[actor_id][str(level)] = stats
                peak = max(peak, level_peak)
        workers = _workers(server.pid)
        rss_after = procs.rss_bytes(server.pid)
        cold = {a: await _sequential(server, a, plan.cold_calls, plan.cold_warmup_calls)
                for a in COLD_ACTORS.values()}
    return {"rss_idle_mb": _mb(rss_idle), "rss_load_peak_mb": _mb(peak),
            "rss_after_load_mb": _mb(rss_after), "latency": latency,
            "throughput": throughput, "cold": cold, "workers": workers}


async def _sequential(server: servers.Running, actor_id: str, calls: int,
                      warmup_calls: int) -> dict[str, Any]:
    """One connection, ``calls`` calls one after another (after ``warmup_calls``)."""
    stats = await run_calls(server.url, actor_id, connections=1, calls=calls,
                            warmup_calls=warmup_calls, server_pid=server.pid)
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


def _mb(size: float) -> float:
    return round(size / procs.MIB, 2)
