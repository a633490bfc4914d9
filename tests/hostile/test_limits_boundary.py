"""Limits at their boundary: just under passes, just over fails with the right code.

Each test loads the `limits` probe actor (py/limits, js/limits) on a fresh Runtime, runs
the amount just under the limit (it must return normally), then just over (it must fail
with the exact error), then a benign call on the same actor (it must succeed), and
finally checks that nothing of its sandboxes is left on the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile_support import SandboxWatch, hostile_settings, running

from service.errors import RpcError
from service.runtime import Runtime
from service.sandbox.base import Backend
from service.settings import Limits

MARGIN_S = 15
# Threads the runtime itself has in a sandbox before the script starts any: the
# harness (and the sandbox's init) for Python; node's main, V8 platform and libuv threads.
BASELINE_TASKS = {"py": 4, "js": 10}


@dataclass(frozen=True)
class Boundary:
    """One limit: the probe mode, the amount just under and just over, and the error over it."""

    name: str
    mode: str
    under: Callable[[Limits, str], Any]
    over: Callable[[Limits, str], Any]
    error: Callable[[Limits], dict[str, Any]]
    languages: tuple[str, ...] = ("py", "js")


def _output(limits: Limits, fraction: float) -> dict[str, int]:
    """Values of 56 KiB adding up to ``fraction`` of output_bytes."""
    size = 56 * 1024
    return {"count": int(limits.output_bytes * fraction) // size, "size": size}


BOUNDARIES = [
    Boundary("memory", "alloc",
             lambda lim, _: lim.memory_mb // 2, lambda lim, _: lim.memory_mb * 3 // 2,
             lambda lim: {"code": -32006, "data": {"resource": "memory"}}),
    Boundary("output_total", "output",
             lambda lim, _: _output(lim, 0.85), lambda lim, _: _output(lim, 1.15),
             lambda lim: {"code": -32006,
                          "data": {"resource": "output", "limit": lim.output_bytes}}),
    Boundary("output_one_value", "output",  # one line longer than any default read buffer
             lambda lim, _: {"count": 1, "size": int(lim.output_bytes * 0.9)},
             lambda lim, _: {"count": 1, "size": int(lim.output_bytes * 1.1)},
             lambda lim: {"code": -32006,
                          "data": {"resource": "output", "limit": lim.output_bytes}}),
    Boundary("pids_threads", "threads",
             lambda lim, lang: lim.pids - 8 - BASELINE_TASKS[lang], lambda lim, _: lim.pids + 8,
             lambda lim: {"code": -32006, "data": {"resource": "pids", "limit": lim.pids}}),
    Boundary("pids_processes", "processes",
             lambda lim, lang: lim.pids - 8 - BASELINE_TASKS[lang], lambda lim, _: lim.pids + 8,
             lambda lim: {"code": -32006, "data": {"resource": "pids", "limit": lim.pids}},
             languages=("py",)),
    Boundary("timeout", "sleep",
             lambda lim, _: lim.timeout_s * 0.5, lambda lim, _: lim.timeout_s * 2,
             lambda lim: {"code": -32005, "data": {"limit_s": lim.timeout_s}}),
]
ROWS = [(b, lang) for b in BOUNDARIES for lang in b.languages]


async def call(runtime: Runtime, actor_id: str, mode: str, arg: Any = None) -> Any:
    """The call's result, or the JSON-RPC error object it failed with."""
    payload = {"mode": mode} if arg is None else {"mode": mode, "arg": arg}
    timeout_s = runtime.get(actor_id).limits.timeout_s + MARGIN_S
    try:
        return await asyncio.wait_for(runtime.process(actor_id, payload), timeout_s)
    except RpcError as exc:
        return exc.to_json()


def failed_with(outcome: Any, expected: dict[str, Any]) -> bool:
    data = outcome.get("data") or {}
    return (outcome.get("code") == expected["code"]
            and all(data.get(k) == v for k, v in expected["data"].items()))


@pytest.mark.parametrize(("boundary", "language"), ROWS,
                         ids=[f"{b.name}-{lang}" for b, lang in ROWS])
async def test_just_under_passes_just_over_fails(boundary: Boundary, language: str,
                                                 backend: Backend, corpus: Path) -> None:
    if boundary.name == "pids_processes" and backend.name == "gvisor":
        pytest.skip("gvisor: every process costs the Sentry ~4 MiB of host memory, charged to "
                    "the actor, so 20 processes do not fit this probe's 64 MiB; the pids limit "
                    "is tested with memory to spare by test_sandbox_contract.py's fork rows")
    manifest = corpus / language / "limits" / "limits.yaml"
    async with running(hostile_settings(corpus), backend, [manifest], SandboxWatch()) as runtime:
        actor = runtime.actors()[0]
        under = boundary.under(actor.limits, language)
        outcome = await call(runtime, actor.id, boundary.mode, under)
        assert "return" in outcome, f"just under ({under}) failed: {outcome}"
        over = boundary.over(actor.limits, language)
        outcome = await call(runtime, actor.id, boundary.mode, over)
        expected = boundary.error(actor.limits)
        assert failed_with(outcome, expected), f"just over ({over}): {outcome}, not {expected}"
        assert (await call(runtime, actor.id, "benign"))["return"] == {"ok": True}


@pytest.mark.parametrize("language", ["py", "js"])
async def test_repeated_breaches_leave_the_pool_healthy(language: str, backend: Backend,
                                                        corpus: Path) -> None:
    """Five memory bombs in a row, each answered exactly; then a normal call succeeds."""
    manifest = corpus / language / "limits" / "limits.yaml"
    async with running(hostile_settings(corpus), backend, [manifest], SandboxWatch()) as runtime:
        actor = runtime.actors()[0]
        for _ in range(5):
            outcome = await call(runtime, actor.id, "alloc", actor.limits.memory_mb * 2)
            assert failed_with(outcome, {"code": -32006, "data": {"resource": "memory"}}), outcome
        assert (await call(runtime, actor.id, "benign"))["return"] == {"ok": True}
        busy, _idle, queued = runtime.pool_stats()[actor.id]
        assert (busy, queued) == (0, 0)
