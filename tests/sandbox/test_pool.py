"""ActorPool: concurrency, the queue and Busy, reuse, warm workers, close and drain.

The scheduling rules run against a scripted in-memory backend (exact and instant);
reuse and warm boots are checked again against the real backend(s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sandbox_helpers import ACTORS, Recorder, actor_def, request

from service.errors import ActorFailed, Busy, Cancelled, SandboxUnavailable
from service.manifest.model import ActorDef, PoolSpec
from service.sandbox.base import Availability, Backend, CallOutcome, CallRequest, EventSink
from service.sandbox.capacity import SandboxCapacity
from service.sandbox.pool import ActorPool, PoolStats


class FakeWorker:
    """Does what the payload says: "block" until the backend's gate opens, "fail" raises,
    "hang" until it is closed (then fails as a killed sandbox would)."""

    def __init__(self, number: int, backend: FakeBackend) -> None:
        self.number = number
        self.backend = backend
        self.alive = True
        self.resets = 0
        self.calls = 0

    def claim(self) -> bool:
        return self.alive

    async def call(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        self.calls += 1
        self.backend.running += 1
        self.backend.peak = max(self.backend.peak, self.backend.running)
        try:
            if request.payload.get("do") == "block":
                await self.backend.gate.wait()
            if request.payload.get("do") == "hang":
                await until(lambda: not self.alive)
                raise ActorFailed("SandboxCrashed", "killed")
            if request.payload.get("do") == "fail":
                self.alive = False
                raise ActorFailed("ZeroDivisionError", "division by zero")
        finally:
            self.backend.running -= 1
        return CallOutcome({"worker": self.number, "resets": self.resets}, {})

    async def reset(self) -> None:
        self.resets += 1

    async def close(self) -> None:
        self.alive = False
        if self.backend.close_gate is not None:  # a sandbox that takes a while to go
            await asyncio.shield(self.backend.close_gate.wait())
        if self.number not in self.backend.closed:  # idempotent, as Worker.close must be
            self.backend.closed.append(self.number)


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.workers: list[FakeWorker] = []
        self.closed: list[int] = []
        self.gate = asyncio.Event()
        self.boot_gate: asyncio.Event | None = None  # set: boots wait for it
        self.close_gate: asyncio.Event | None = None  # set: closes wait for it
        self.fail_boot = False
        self.running = 0
        self.peak = 0

    async def availability(self) -> Availability:
        return Availability(self.name, True)

    async def start_worker(self, actor: ActorDef) -> FakeWorker:
        if self.boot_gate is not None:
            await self.boot_gate.wait()
        if self.fail_boot:
            raise SandboxUnavailable(self.name, "no sandbox today")
        worker = FakeWorker(len(self.workers), self)
        self.workers.append(worker)
        return worker

    async def aclose(self) -> None:
        """Nothing held."""


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Let the event loop run until ``condition`` holds (fails the test after timeout_s)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def fake_pool(backend: FakeBackend, **spec: Any) -> ActorPool:
    return ActorPool(actor_def(ACTORS / "origin.py", pool=PoolSpec(**spec)), backend)


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


def run(pool: ActorPool, do: str = "") -> asyncio.Task[CallOutcome]:
    return asyncio.create_task(pool.run(request({"do": do}), Recorder()))


async def test_at_most_max_workers_calls_run(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=2, max_queue=10)
    calls = [run(pool, "block") for _ in range(5)]
    await until(lambda: pool.stats == PoolStats(busy=2, idle=0, queued=3))
    assert fake.running == 2
    fake.gate.set()
    outcomes = await asyncio.gather(*calls)
    assert fake.peak == 2
    assert len(outcomes) == 5
    await pool.aclose()


async def test_busy_past_max_queue(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=1)
    running, waiting = run(pool, "block"), run(pool, "block")
    await until(lambda: pool.stats == PoolStats(busy=1, idle=0, queued=1))
    hints = set()
    for _ in range(20):
        with pytest.raises(Busy) as caught:
            await pool.run(request({}), Recorder())
        error = caught.value.to_json()
        assert (error["code"], error["message"]) == (-32008, "Busy: the actor's queue is full")
        hints.add(error["data"]["retry_after_ms"])
    # No call finished yet: the estimate is 100 ms per call times the rounds to wait (2), plus
    # up to half of it at random, so callers refused together do not retry in lockstep.
    assert all(200 <= hint <= 300 for hint in hints)
    assert len(hints) > 1
    fake.gate.set()
    await asyncio.gather(running, waiting)
    await pool.aclose()


async def test_no_queue_means_busy_at_once(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=0)
    running = run(pool, "block")
    await until(lambda: fake.running == 1)
    with pytest.raises(Busy):
        await pool.run(request({}), Recorder())
    fake.gate.set()
    await running
    await pool.aclose()


async def test_cancelled_waiter_leaves_the_queue(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=1)
    running, waiting = run(pool, "block"), run(pool)
    await until(lambda: pool.stats.queued == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.stats.queued == 0
    fake.gate.set()
    await running
    await pool.aclose()


async def test_idle_worker_is_reset_then_reused(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1)
    first = await pool.run(request({}), Recorder())
    second = await pool.run(request({}), Recorder())
    assert (first.return_value, second.return_value) == ({"worker": 0, "resets": 0},
                                                         {"worker": 0, "resets": 1})
    await pool.aclose()
    assert fake.closed == [0]


async def test_reuse_false_gives_a_fresh_worker_per_call(fake: FakeBackend) -> None:
    pool = fake_pool(fake, reuse=False)
    first = await pool.run(request({}), Recorder())
    second = await pool.run(request({}), Recorder())
    assert (first.return_value["worker"], second.return_value["worker"]) == (0, 1)
    await until(lambda: fake.closed == [0, 1])
    assert [w.calls for w in fake.workers] == [1, 1]
    await pool.aclose()


async def test_a_single_use_worker_is_closed_after_its_caller_resumed(
        fake: FakeBackend) -> None:
    """Its close (a kill, reads of its cgroups) is not part of the call's time."""
    pool = fake_pool(fake, reuse=False)
    seen: list[list[int]] = []

    async def caller() -> None:  # the RPC layer runs the call as a task of its own
        await asyncio.ensure_future(pool.run(request({}), Recorder()))
        seen.append(list(fake.closed))  # where the answer is sent

    await asyncio.create_task(caller())
    assert seen == [[]]
    await until(lambda: fake.closed == [0])
    await pool.aclose()


async def test_closing_the_pool_closes_a_worker_waiting_for_its_retirement(
        fake: FakeBackend) -> None:
    pool = fake_pool(fake, reuse=False)
    await pool.run(request({}), Recorder())
    await pool.aclose()  # right away: the close is still scheduled
    assert fake.closed == [0]


async def test_failed_worker_is_closed_and_replaced(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1)
    with pytest.raises(ActorFailed):
        await pool.run(request({"do": "fail"}), Recorder())
    after = await pool.run(request({}), Recorder())
    assert after.return_value == {"worker": 1, "resets": 0}
    await until(lambda: fake.closed == [0])
    await pool.aclose()


async def test_min_warm_boots_in_the_background(fake: FakeBackend) -> None:
    fake.boot_gate = asyncio.Event()
    pool = fake_pool(fake, min_warm=2, max_workers=4)
    await pool.start()  # returns while the boots still wait
    assert (len(fake.workers), pool.stats.idle) == (0, 0)
    fake.boot_gate.set()
    await until(lambda: pool.stats.idle == 2)
    outcome = await pool.run(request({}), Recorder())
    assert outcome.return_value["worker"] in (0, 1)
    await until(lambda: len(fake.workers) == 3)  # the warm one taken is replaced
    await pool.aclose()
    assert sorted(fake.closed) == [0, 1, 2]


async def test_call_waits_for_the_warm_boot_instead_of_booting_past_max_workers(
        fake: FakeBackend) -> None:
    fake.boot_gate = asyncio.Event()
    pool = fake_pool(fake, min_warm=1, max_workers=1)
    await pool.start()
    seen: list[PoolStats] = []
    call = asyncio.create_task(pool.run(request({}), Recorder()))
    for _ in range(20):  # the call must not start a boot of its own
        await asyncio.sleep(0)
    fake.boot_gate.set()
    while not call.done():
        seen.append(pool.stats)
        await asyncio.sleep(0)
    outcome = await call
    await until(lambda: pool.stats.idle == 1)
    for _ in range(20):
        seen.append(pool.stats)
        await asyncio.sleep(0)
    await pool.aclose()
    assert outcome.return_value == {"worker": 0, "resets": 0}
    assert len(fake.workers) == 1
    assert max(stats.idle for stats in seen) == 1


async def test_no_warm_boot_past_max_workers_while_a_call_runs(fake: FakeBackend) -> None:
    pool = fake_pool(fake, min_warm=1, max_workers=1)
    await pool.start()
    await until(lambda: pool.stats.idle == 1)
    running = run(pool, "block")
    await until(lambda: pool.stats.busy == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(fake.workers) == 1  # min_warm yields to max_workers
    fake.gate.set()
    await running
    await until(lambda: pool.stats.idle == 1)
    await pool.aclose()
    assert len(fake.workers) == 1


async def test_boot_failure_is_sandbox_unavailable(fake: FakeBackend) -> None:
    fake.fail_boot = True
    pool = fake_pool(fake, max_workers=1)
    with pytest.raises(SandboxUnavailable) as caught:
        await pool.run(request({}), Recorder())
    assert caught.value.to_json()["data"] == {"backend": "fake", "reason": "no sandbox today"}
    assert pool.stats == PoolStats(busy=0, idle=0, queued=0)
    await pool.aclose()


async def test_aclose_cancels_running_calls(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=1)
    running, waiting = run(pool, "hang"), run(pool, "hang")
    await until(lambda: pool.stats == PoolStats(busy=1, idle=0, queued=1))
    await pool.aclose()
    results = await asyncio.gather(running, waiting, return_exceptions=True)
    assert [type(r) for r in results] == [Cancelled, Cancelled]
    assert fake.closed == [0]


async def test_drain_finishes_accepted_calls_then_closes(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=4)
    running, waiting = run(pool, "block"), run(pool)
    await until(lambda: pool.stats.queued == 1)
    draining = asyncio.create_task(pool.drain())
    await asyncio.sleep(0)
    with pytest.raises(SandboxUnavailable):
        await pool.run(request({}), Recorder())
    assert not draining.done()
    fake.gate.set()
    outcomes = await asyncio.gather(running, waiting)
    await draining
    assert len(outcomes) == 2
    assert fake.closed == [0]


# --- with real sandboxes -------------------------------------------------------------------


@pytest.mark.parametrize(("reuse", "counts"), [(True, [1, 2, 3]), (False, [1, 1, 1])])
async def test_reuse_on_real_sandboxes(backend: Backend, reuse: bool, counts: list[int]) -> None:
    pool = ActorPool(actor_def(ACTORS / "counter.py", pool=PoolSpec(max_workers=1, reuse=reuse)),
                     backend)
    try:
        outcomes = [await pool.run(request({}), Recorder()) for _ in range(3)]
    finally:
        await pool.aclose()
    assert [o.return_value["calls"] for o in outcomes] == counts


@pytest.mark.parametrize(("script", "linger"), [
    ("counter.py", True), ("counter.js", "timer"), ("counter.js", "immediate"),
    ("counter.js", "unref_timeout"), ("counter.js", "unref_immediate"),
    ("counter.js", "promise_timeout"), ("counter.js", "promise_immediate"),
    ("counter.js", "esm_promise_timeout"), ("counter.js", "abort_timeout")])
async def test_worker_with_lingering_work_is_replaced(backend: Backend, script: str,
                                                      linger: Any) -> None:
    """Threads or timers still running after a call would run between calls, or in a later
    call (a JavaScript harness's event loop stands still between calls): no reuse."""
    pool = ActorPool(actor_def(ACTORS / script, pool=PoolSpec(max_workers=1)), backend)
    try:
        first = await pool.run(request({}), Recorder())
        lingered = await pool.run(request({"linger": linger}), Recorder())
        fresh = await pool.run(request({}), Recorder())
        again = await pool.run(request({}), Recorder())
    finally:
        await pool.aclose()
    calls = [o.return_value["calls"] for o in (first, lingered, fresh, again)]
    assert calls == [1, 2, 1, 2]


@pytest.mark.parametrize("linger", ["cleared", "fired"])
async def test_timers_that_ended_in_their_call_leave_the_worker_reusable(
        backend: Backend, linger: str) -> None:
    pool = ActorPool(actor_def(ACTORS / "counter.js", pool=PoolSpec(max_workers=1)), backend)
    try:
        outcomes = [await pool.run(request({"linger": linger}), Recorder()) for _ in range(3)]
    finally:
        await pool.aclose()
    assert [o.return_value["calls"] for o in outcomes] == [1, 2, 3]


async def test_min_warm_on_real_sandboxes(backend: Backend,
                                          actor: Callable[..., ActorDef]) -> None:
    pool = ActorPool(actor("origin.py", pool=PoolSpec(min_warm=2, max_workers=2)), backend)
    try:
        await pool.start()
        await until(lambda: pool.stats.idle == 2, timeout_s=60)
        outcome = await pool.run(request({"input": 2}), Recorder())
    finally:
        await pool.aclose()
    assert outcome.return_value == {"status": "completed"}
    assert pool.stats == PoolStats(busy=0, idle=0, queued=0)


async def test_an_idle_worker_that_dies_is_closed_and_replaced(
        fake: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. the process backend killed it for idling too long: min_warm boots another."""
    monkeypatch.setattr("service.sandbox.pool.IDLE_SWEEP_S", 0.01)
    pool = fake_pool(fake, min_warm=1, max_workers=2)
    await pool.start()
    await until(lambda: pool.stats.idle == 1)
    fake.workers[0].alive = False
    await until(lambda: len(fake.workers) == 2 and pool.stats.idle == 1)
    assert fake.closed == [0]
    await pool.aclose()


async def test_warm_boots_pause_after_a_violation(
        fake: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed for running code between calls is not replaced at once: a script
    that misbehaves from its load on would make the pool boot in a loop."""
    monkeypatch.setattr("service.sandbox.pool.IDLE_SWEEP_S", 0.01)
    monkeypatch.setattr("service.sandbox.pool.WARM_BACKOFF_S", 3600.0)
    pool = fake_pool(fake, min_warm=1, max_workers=2)
    await pool.start()
    await until(lambda: pool.stats.idle == 1)
    fake.workers[0].violation = "used 80 ms of CPU while idle"  # type: ignore[attr-defined]
    fake.workers[0].alive = False
    await until(lambda: fake.closed == [0])
    for _ in range(20):  # sweeps come and go: none boots a warm worker
        await asyncio.sleep(0.01)
    assert (len(fake.workers), pool.stats.idle) == (1, 0)
    outcome = await pool.run(request({}), Recorder())  # a call still gets a worker
    assert outcome.return_value["worker"] == 1


async def test_boots_and_boot_failures_are_counted(fake: FakeBackend) -> None:
    pool = fake_pool(fake, max_workers=1, max_queue=0, reuse=False)  # every call boots
    await run(pool)
    fake.fail_boot = True
    with pytest.raises(SandboxUnavailable):
        await run(pool)
    assert (pool.boots, pool.boot_failures) == (2, 1)
    await pool.aclose()


# --- the server's capacity, shared by every pool -----------------------------------------


def capped_pool(backend: FakeBackend, capacity: SandboxCapacity, script: str = "origin.py",
                **spec: Any) -> ActorPool:
    actor = actor_def(ACTORS / script, pool=PoolSpec(**spec), memory_mb=100)
    return ActorPool(actor, backend, capacity)


async def test_warm_boots_stop_at_the_servers_capacity(fake: FakeBackend) -> None:
    """min_warm 3 on a server with room for 250 MiB: two sandboxes of 100 MiB, not three."""
    capacity = SandboxCapacity(max_sandboxes=10, memory_mb=250)
    pool = capped_pool(fake, capacity, min_warm=3, max_workers=4)
    await pool.start()
    await until(lambda: pool.stats.idle == 2)
    await asyncio.sleep(0.01)
    assert (len(fake.workers), capacity.sandboxes, capacity.committed_mb) == (2, 2, 200)
    await pool.aclose()
    assert (capacity.sandboxes, capacity.committed_mb) == (0, 0)


async def test_a_call_takes_an_idle_sandbox_of_another_actor(fake: FakeBackend) -> None:
    capacity = SandboxCapacity(max_sandboxes=2)
    warm = capped_pool(fake, capacity, min_warm=2, max_workers=2)
    await warm.start()
    await until(lambda: warm.stats.idle == 2)
    other = capped_pool(fake, capacity, "origin.js")
    await other.start()
    outcome = await other.run(request({}), Recorder())
    assert outcome.return_value["worker"] == 2
    assert (warm.stats.idle, fake.closed, capacity.sandboxes) == (1, [0], 2)
    await asyncio.gather(warm.aclose(), other.aclose())
    assert capacity.sandboxes == 0


async def test_busy_when_every_sandbox_is_running(fake: FakeBackend) -> None:
    capacity = SandboxCapacity(max_sandboxes=1)
    first = capped_pool(fake, capacity)
    other = capped_pool(fake, capacity, "origin.js")
    await first.start()
    await other.start()
    running = run(first, "block")
    await until(lambda: fake.running == 1)
    with pytest.raises(Busy) as caught:
        await other.run(request({}), Recorder())
    error = caught.value.to_json()
    assert 100 <= error["data"].pop("retry_after_ms") <= 150  # 100 ms, plus jitter
    assert error == {
        "code": -32008, "data": {},
        "message": "Busy: the server's sandbox capacity is in use "
                   "(1 of 1 sandboxes, 100 of inf MiB)"}
    fake.gate.set()
    await running
    assert (await other.run(request({}), Recorder())).return_value["worker"] == 1
    await asyncio.gather(first.aclose(), other.aclose())
    assert capacity.sandboxes == 0


async def test_a_failed_boot_gives_its_lease_back(fake: FakeBackend) -> None:
    capacity = SandboxCapacity(max_sandboxes=1)
    pool = capped_pool(fake, capacity)
    fake.fail_boot = True
    with pytest.raises(SandboxUnavailable):
        await pool.run(request({}), Recorder())
    assert capacity.sandboxes == 0
    fake.fail_boot = False
    with pytest.raises(ActorFailed):
        await pool.run(request({"do": "fail"}), Recorder())
    await until(lambda: capacity.sandboxes == 0)  # the dead worker was closed: lease back
    await pool.aclose()


async def test_a_closed_sandbox_gives_its_capacity_back_only_once_gone(
        fake: FakeBackend) -> None:
    """A call's task closing another actor's idle sandbox to take its place, cancelled
    (twice) meanwhile, gave the capacity back while that sandbox was still being closed."""
    capacity = SandboxCapacity(max_sandboxes=1)
    warm = capped_pool(fake, capacity, min_warm=1, max_workers=1)
    await warm.start()
    await until(lambda: warm.stats.idle == 1)
    fake.close_gate = asyncio.Event()
    other = capped_pool(fake, capacity, "origin.js")
    await other.start()
    call = asyncio.ensure_future(other.run(request({}), Recorder()))
    await asyncio.sleep(0.01)  # it is closing the idle sandbox of `warm`
    call.cancel()
    await asyncio.sleep(0)
    call.cancel()
    await asyncio.sleep(0.01)
    assert capacity.sandboxes == 1 and not call.done()  # still there: still counted
    fake.close_gate.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert capacity.sandboxes == 0 and fake.closed == [0]
    await asyncio.gather(warm.aclose(), other.aclose())
