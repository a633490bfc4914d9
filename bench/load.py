"""The client loop: closed-loop `process` calls over WebSocket, timed per call.

Every connection sends one request and waits for its response before sending the
next (no pipelining), so a level of N connections has at most N calls in flight.
The same loop drives the real server and the echo baseline. It writes and reads JSON with
orjson, as fast as a host's own (reflow's serde_json): the 5.7 KB schema-heavy order costs
it ~11 µs to write where the standard library takes ~90, time that is not the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench import procs

CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
INPUT, OUTPUT = 21, 42  # the echo baseline's canned answer is 42 too


class CallFailed(RuntimeError):
    """A call came back with an error, a wrong result, or not at all."""


@dataclass(frozen=True)
class Stats:
    """What one measured run gave: call count, wall time and per-call latencies (ms)."""

    calls: int
    elapsed_s: float
    latencies_ms: tuple[float, ...]
    server_cpu_s: float = 0.0  # CPU time the server process used meanwhile

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the latencies, in ms."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float]:
        cpu_us = self.server_cpu_s / self.calls * 1e6 if self.calls else 0.0
        return {"calls": self.calls, "elapsed_s": round(self.elapsed_s, 3),
                "calls_per_s": round(self.calls_per_s, 1),
                "p50_ms": round(self.percentile(50), 3), "p90_ms": round(self.percentile(90), 3),
                "p99_ms": round(self.percentile(99), 3),
                "server_cpu_us_per_call": round(cpu_us, 1)}


@dataclass(frozen=True)
class CallSpec:
    """What each call sends on the ``input`` port and must get back on ``output``."""

    input: Any = INPUT
    output: Any = OUTPUT
    state: dict[str, Any] | None = None  # e.g. a state context (persistent state)


class Caller:
    """One connection making one call at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, actor_id: str,
                 call: CallSpec | None = None) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.spec = call or CallSpec()
        self.params: dict[str, Any] = {"actor_id": actor_id,
                                       "payload": {"input": self.spec.input}}
        if self.spec.state is not None:
            self.params["state"] = self.spec.state

    async def call(self) -> float:
        """One `process` round trip; its latency in ms."""
        request_id = next(self.ids)
        frame = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "process",
                              "params": self.params}).decode()
        started = time.perf_counter()
        await self.ws.send_str(frame)
        response = await self._response(request_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._check(response)
        return elapsed_ms

    async def _response(self, request_id: int) -> dict[str, Any]:
        while True:  # notifications (output, log) come first; skip them
            msg = await self.ws.receive(timeout=CALL_TIMEOUT_S)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise CallFailed(f"connection ended: {msg.type.name} {msg.data!r}")
            message: dict[str, Any] = orjson.loads(msg.data)
            if message.get("id") == request_id:
                return message

    def _check(self, response: dict[str, Any]) -> None:
        if "error" in response:
            raise CallFailed(f"the call failed: {response['error']}")
        if response["result"]["outputs"].get("output") != self.spec.output:
            raise CallFailed(f"wrong result: {response['result']}")


async def run_calls(url: str, actor_id: str, *, connections: int, calls: int | None = None,
                    duration_s: float | None = None, warmup_calls: int = 0,
                    warmup_s: float = 0.0, server_pid: int | None = None,
                    call: CallSpec | None = None) -> Stats:
    """Warm up (``warmup_calls`` per connection, then ``warmup_s``), then measure ``calls``
    calls per connection, or as many as fit in ``duration_s``; with ``server_pid``, also the
    CPU time that process used during the measured part."""
    async with _connected([url] * connections) as sockets:
        callers = [Caller(ws, actor_id, call) for ws in sockets]
        if warmup_calls > 0:
            await _measure(callers, warmup_calls, None)
        if warmup_s > 0:
            await _measure(callers, None, warmup_s)
        return await _measure(callers, calls, duration_s, server_pid)


@dataclass(frozen=True)
class Target:
    """One server and actor that ``run_interleaved`` measures (``pid``: its CPU is counted)."""

    url: str
    actor_id: str
    pid: int | None = None
    call: CallSpec | None = None


async def run_interleaved(targets: list[Target], *, calls: int, warmup_calls: int,
                          rounds: int) -> list[Stats]:
    """One connection per target; after ``warmup_calls`` on each, ``calls`` sequential calls
    per target in ``rounds`` turns: each turn makes a share of every target's calls, one
    target after the other. A machine that gets slower or faster during the run (other work,
    frequency, the hypervisor) then weighs on every target alike, not on whichever happened
    to be measured in the slow minute. The Stats of each target, over all its turns."""
    async with _connected([t.url for t in targets]) as sockets:
        callers = [Caller(ws, t.actor_id, t.call) for ws, t in zip(sockets, targets,
                                                                   strict=True)]
        for caller in callers:
            await _measure([caller], warmup_calls, None)
        turns: list[list[Stats]] = [[] for _ in targets]
        for turn in range(rounds):
            share = calls * (turn + 1) // rounds - calls * turn // rounds
            for target, caller, done in zip(targets, callers, turns, strict=True):
                done.append(await _measure([caller], share, None, target.pid))
        return [_merged(done) for done in turns]


@contextlib.asynccontextmanager
async def _connected(urls: list[str]) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
    """One WebSocket per url, all closed at the end."""
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        try:
            for url in urls:
                sockets.append(await session.ws_connect(url, max_msg_size=0))
            yield sockets
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def _merged(parts: list[Stats]) -> Stats:
    return Stats(sum(p.calls for p in parts), sum(p.elapsed_s for p in parts),
                 tuple(itertools.chain.from_iterable(p.latencies_ms for p in parts)),
                 sum(p.server_cpu_s for p in parts))


async def _measure(callers: list[Caller], calls: int | None, duration_s: float | None,
                   server_pid: int | None = None) -> Stats:
    """The callers' calls; with ``server_pid``, the CPU time that process used meanwhile."""
    cpu_before = procs.cpu_seconds(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else math.inf
    per_caller = await asyncio.gather(*(_loop(c, calls, deadline) for c in callers))
    elapsed = time.perf_counter() - started
    latencies = tuple(itertools.chain.from_iterable(per_caller))
    cpu_used = procs.cpu_seconds(server_pid) - cpu_before if server_pid else 0.0
    return Stats(len(latencies), elapsed, latencies, cpu_used)


async def _loop(caller: Caller, calls: int | None, deadline: float) -> list[float]:
    latencies: list[float] = []
    while (calls is None or len(latencies) < calls) and time.perf_counter() < deadline:
        latencies.append(await caller.call())
    return latencies
