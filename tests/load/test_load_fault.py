"""Load and faults, loopback only: many connections making thousands of `process` calls
while sandboxes are SIGKILLed at random and connections drop mid-call.

What must hold:
- on a live connection every call is answered exactly once, either with the exact result
  (doubler and doubler_js: 2 x input; counter: value x factor and count + 1; ticker: 1..n,
  its `output` notifications first) or with -32004 (its sandbox was killed under it).
  The pools' queues hold every call that can be in flight, so -32008 (busy) cannot happen
  and fails the test like any other code;
- every call has exactly one ending on the server (``RecordingRuntime``), the one its answer
  shows; nothing is lost and nothing runs twice;
- a dropped connection's calls in flight are cancelled: its streamer call (spared by the
  killer, and never done before the drop) ends cancelled, and every pool's busy and
  queued counts return to 0;
- then every sandbox still running is an idle pool worker (the pools may count a worker
  killed while idle until they next take it);
- after the server and the runtime are closed: no sandbox process met during the run is
  alive (orphans included), this process has no descendant it did not have at the start
  (zombies included), and /proc/self/fd holds exactly the descriptors (number and target)
  it held before the runtime was made.

CI: 50 live connections x 40 calls = 2000 calls, plus 10 connections that drop:
    .venv/bin/python -m pytest tests/load -q
Full (scaled by the environment; -s prints its figures):
    LOAD_CALLS_PER_CONN=200 LOAD_CONNECTIONS=100 LOAD_DROPS=20 \\
        .venv/bin/python -m pytest tests/load -m slow -s --timeout 1800
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from load_support import (
    Call,
    Killer,
    ManifestsFactory,
    Proc,
    RecordingRuntime,
    Report,
    cmdline,
    descendants,
    dropping_connection,
    is_alive,
    live_connection,
    open_fds,
    plan_calls,
)

from service.sandbox.process import ProcessBackend
from service.server import create_app
from service.settings import Settings

SETTLE_S = 20.0  # how long the pools and the process tree may take to come to rest
CALLS_BEFORE_DROP = 4


@dataclass(frozen=True)
class Scenario:
    connections: int  # live connections, each making calls_per_conn calls
    calls_per_conn: int
    drops: int  # more connections, each dropping while its calls run
    depth: int = 3  # calls in flight per connection
    kill_interval_s: float = 0.1
    seed: int = 6

    @property
    def max_in_flight(self) -> int:
        return (self.connections + self.drops) * self.depth


async def test_load_and_faults(make_manifests: ManifestsFactory) -> None:
    await run(Scenario(connections=50, calls_per_conn=40, drops=10), make_manifests)


@pytest.mark.slow
@pytest.mark.skipif("LOAD_CALLS_PER_CONN" not in os.environ,
                    reason="the full load run: set LOAD_CALLS_PER_CONN (e.g. 200)")
async def test_load_and_faults_full(make_manifests: ManifestsFactory) -> None:
    env = os.environ
    await run(Scenario(connections=int(env.get("LOAD_CONNECTIONS", "100")),
                       calls_per_conn=int(env["LOAD_CALLS_PER_CONN"]),
                       drops=int(env.get("LOAD_DROPS", "20"))), make_manifests)


async def run(scenario: Scenario, make_manifests: ManifestsFactory) -> None:
    """The whole scenario; asserts everything the module docstring promises."""
    fds_before, procs_before = open_fds(), descendants()
    folder = make_manifests(scenario.max_in_flight)
    settings = Settings(manifest_paths=(folder,), allowed_roots=(folder,), backend="process")
    runtime = RecordingRuntime(settings, ProcessBackend(settings))
    killer = Killer(scenario.kill_interval_s, "/actor/streamer.py", random.Random(scenario.seed))
    started = time.monotonic()
    try:
        await runtime.start()
        server = TestServer(create_app(settings, runtime), host="127.0.0.1")
        # one WebSocket holds one connection: lift aiohttp's default limit of 100
        async with TestClient(server, connector=aiohttp.TCPConnector(limit=0)) as client:
            await _settle(lambda: all(idle >= 1 for actor, (_, idle, _) in
                                      runtime.pool_stats().items() if actor != "streamer"),
                          "warm", runtime.pool_stats)
            live, dropped = await _drive(client, scenario, killer)
            duration_s = time.monotonic() - started
            await _settle(lambda: all(busy == 0 and queued == 0 for busy, _, queued in
                                      runtime.pool_stats().values()),
                          "quiet (busy and queued 0)", runtime.pool_stats)
            _check_answers(scenario, live, dropped, runtime, killer)
            # The pools learn that an idle worker was killed only when they next take it:
            # they may count more idle workers than there are sandboxes, never fewer.
            await _settle(lambda: _sandboxes() <= _idle(runtime),
                          "every sandbox an idle worker", lambda: _tree(runtime))
    finally:
        await runtime.aclose()
    await _settle(lambda: set(descendants()) <= set(procs_before) and open_fds() == fds_before,
                  "back to the processes and fds of the start",
                  lambda: (set(descendants()) - set(procs_before),
                           set(open_fds().items()) ^ set(fds_before.items())))
    _check_nothing_left(killer, procs_before, fds_before)
    _print_figures(scenario, live, dropped, killer, duration_s)


async def _drive(client: TestClient, scenario: Scenario,
                 killer: Killer) -> tuple[list[Report], list[Report]]:
    """All connections at once, the killer running until they are done."""
    rng = random.Random(scenario.seed)
    plans = [plan_calls(n, scenario.calls_per_conn, rng) for n in range(scenario.connections)]
    drops = [(plan_calls(n, CALLS_BEFORE_DROP, rng), _streamer_call(n))
             for n in range(scenario.connections, scenario.connections + scenario.drops)]
    stop = asyncio.Event()
    killing = asyncio.create_task(killer.run(stop))
    try:
        live, dropped = await asyncio.gather(
            asyncio.gather(*(live_connection(client, p, scenario.depth) for p in plans)),
            asyncio.gather(*(dropping_connection(client, calls, streamer, scenario.depth)
                             for calls, streamer in drops)))
        return list(live), list(dropped)
    finally:
        stop.set()
        await killing


def _streamer_call(conn: int) -> Call:
    # 100000 ticks at 10 ms: it outlasts its 60 s limit, so only the drop can end it in time
    return Call(f"c{conn}-streamer", conn * 1_000_000, "streamer", {"ticks": 100_000}, {}, {},
                (), None)


def _check_answers(scenario: Scenario, live: list[Report], dropped: list[Report],
                   runtime: RecordingRuntime, killer: Killer) -> None:
    problems = [p for report in live + dropped for p in report.problems]
    assert not problems, "\n".join(problems[:30])
    assert [len(r.answered) for r in live] == [scenario.calls_per_conn] * scenario.connections
    assert sum(killer.killed.values()) > 0, "no sandbox was killed: the faults did not happen"
    endings = runtime.outcomes
    for report in live + dropped:
        for call_id, timestamp in report.sent.items():
            assert len(endings[timestamp]) == 1, (call_id, endings[timestamp])
            answer = report.answered.get(call_id)
            if answer is not None:  # answered: the server's ending is that answer
                assert endings[timestamp] == [answer], (call_id, answer, endings[timestamp])
    sent = sum(len(r.sent) for r in live + dropped)
    assert sum(len(e) for e in endings.values()) == sent, "a call ended twice, or never"
    for report in dropped:
        for call in report.unanswered:
            allowed = {"cancelled"} if call.actor_id == "streamer" else {"cancelled", "ok",
                                                                        "-32004"}
            assert endings[call.timestamp][0] in allowed, (call.id, endings[call.timestamp])


def _check_nothing_left(killer: Killer, procs_before: list[Proc],
                        fds_before: dict[int, str]) -> None:
    survivors = [p for p in killer.seen if is_alive(p)]
    assert not survivors, f"sandbox processes outlived the runtime: {survivors}"
    new = set(descendants()) - set(procs_before)
    assert not new, f"descendants that were not there before: {new}"
    fds = open_fds()
    extra = {fd: target for fd, target in fds.items() if fds_before.get(fd) != target}
    missing = {fd: target for fd, target in fds_before.items() if fds.get(fd) != target}
    assert not extra and not missing, f"fds opened and not closed: {extra}; gone: {missing}"


def _sandboxes() -> int:
    """Sandboxes alive: the outer bwrap of each is a child of this process."""
    return sum(1 for p in descendants() if p.ppid == os.getpid() and p.comm == "bwrap")


def _tree(runtime: RecordingRuntime) -> str:
    """The sandboxes below this process, and the pools' stats: what a failure shows."""
    procs = descendants()
    lines = [f"pools {runtime.pool_stats()}"]
    for outer in (p for p in procs if p.ppid == os.getpid()):
        inner = [f"{p.pid} {p.comm}{' (zombie)' if p.zombie else ''}"
                 for p in procs if p.ppid == outer.pid]
        lines.append(f"{outer.pid} {outer.comm}{' (zombie)' if outer.zombie else ''} "
                     f"{cmdline(outer.pid)[-40:]!r} -> {inner}")
    return "\n".join(lines)


def _idle(runtime: RecordingRuntime) -> int:
    return sum(idle for _, idle, _ in runtime.pool_stats().values())


async def _settle(condition: Callable[[], bool], what: str,
                  state: Callable[[], object]) -> None:
    """Wait (bounded) until ``condition`` holds; else fail, saying ``what`` and ``state()``."""
    deadline = time.monotonic() + SETTLE_S
    while not condition():
        assert time.monotonic() < deadline, f"after {SETTLE_S} s, still not {what}: {state()}"
        await asyncio.sleep(0.05)


def _print_figures(scenario: Scenario, live: list[Report], dropped: list[Report],
                   killer: Killer, duration_s: float) -> None:
    answers = Counter(a for r in live for a in r.answered.values())
    in_flight = sum(len(r.unanswered) for r in dropped)
    print(f"\nload: {sum(answers.values())} calls on {scenario.connections} live connections "
          f"(+{scenario.drops} dropped with {in_flight} calls in flight) in {duration_s:.1f} s; "
          f"answers {dict(answers)}; kills {dict(killer.killed)}")
