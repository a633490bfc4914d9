"""Warm pools: the workers of one actor, and the queue of calls waiting for one.

At most ``pool.max_workers`` calls of an actor run at once and at most ``pool.max_queue``
wait; past that a call fails fast with Busy. ``pool.min_warm`` workers are booted in
the background and kept idle, so a call does not pay for a boot. Never more than
``max_workers`` workers exist (busy, idle, resetting or booting): a call that finds no idle
worker waits for one being reset or warmed up rather than booting another. A worker is reused
(after ``reset()``, which wipes its /tmp) only when its call succeeded, it is still alive
and ``pool.reuse`` is true; anything else is closed and replaced. Every boot first takes a
lease from the server's :class:`SandboxCapacity` (see ``capacity.py``): a warm boot that
does not fit is skipped, a call that does not fit (after idle sandboxes of other actors are
reclaimed) fails with Busy. An idle worker that stops being alive (its backend killed it
for running code between calls, or for being idle too long) is found within IDLE_SWEEP_S,
closed, and replaced up to ``min_warm``; when it was killed for what it did
(``violation``), warm boots pause (WARM_BACKOFF_S, twice as long each time in a row, up to
WARM_BACKOFF_MAX_S): a script that misbehaves from its load on does not make the pool boot
sandboxes in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from service.errors import Busy, Cancelled, SandboxUnavailable
from service.manifest.model import ActorDef
from service.sandbox.base import (
    Backend,
    CallOutcome,
    CallRequest,
    EventSink,
    Worker,
    to_the_end,
)
from service.sandbox.capacity import Lease, SandboxCapacity

logger = logging.getLogger(__name__)

DEFAULT_CALL_MS = 100.0  # the Busy estimate before any call finished
RETRY_JITTER = 0.5  # retry_after_ms is the estimate times 1 to 1 + this, at random
RECENT_CALLS = 20
IDLE_SWEEP_S = 1.0  # how often idle workers are asked whether they are still alive
WARM_BACKOFF_S = 5.0
WARM_BACKOFF_MAX_S = 300.0


class PoolStats(NamedTuple):
    busy: int  # calls running
    idle: int  # booted workers ready for a call
    queued: int  # calls waiting for a slot


class ActorPool:
    """The workers of one actor (see the module docstring)."""

    def __init__(self, actor: ActorDef, backend: Backend,
                 capacity: SandboxCapacity | None = None) -> None:
        self.actor = actor
        self._backend = backend
        self._capacity = capacity if capacity is not None else SandboxCapacity()
        self._slots = asyncio.Semaphore(actor.pool.max_workers)
        self._idle: deque[Worker] = deque()
        self._busy: set[Worker] = set()
        self._queued = 0
        self._running = 0  # calls holding a slot (booting their worker or running)
        self._in_flight = 0  # accepted calls, queued or running
        self._resetting: set[Worker] = set()  # on their way back to idle
        self._warming = 0  # min_warm boots in progress
        self._booting = 0  # boots of calls that found no worker
        self._changed = asyncio.Event()  # replaced by a fresh one on every change waited for
        self._waiting = 0  # tasks in _wait_until
        self._tasks: set[asyncio.Task[None]] = set()
        self._warmers: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._violations = 0  # idle workers killed for what they did, in a row
        self._warm_after = 0.0  # loop time before which no min_warm boot starts
        self._durations_ms: deque[float] = deque(maxlen=RECENT_CALLS)
        self.boots = 0  # sandboxes started, and those that failed to (for /metrics)
        self.boot_failures = 0
        self._accepting = True
        self._closed = False

    @property
    def stats(self) -> PoolStats:
        return PoolStats(self._running, len(self._idle), self._queued)

    async def start(self) -> None:
        """Boot ``min_warm`` workers in the background; returns at once."""
        self._capacity.register(self, self._shed_idle)
        self._top_up()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_idle())

    async def run(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        """Run one call on a worker; Busy when the queue is full."""
        if not self._accepting:
            raise SandboxUnavailable(self._backend.name, f"actor {self.actor.id} is shutting down")
        if self._slots.locked() and self._queued >= self.actor.pool.max_queue:
            raise Busy(self._retry_after_ms())
        self._in_flight += 1
        try:
            await self._wait_slot()
            self._running += 1
            try:
                return await self._run_on_worker(request, on_event)
            finally:
                self._running -= 1
                self._slots.release()
        finally:
            self._in_flight -= 1
            self._notify()

    async def drain(self) -> None:
        """Take no new calls, let the accepted ones finish, then close everything."""
        self._accepting = False
        await self._wait_until(lambda: self._in_flight == 0)
        await self.aclose()

    async def aclose(self) -> None:
        """Kill every worker, running ones included (their calls raise Cancelled)."""
        self._accepting = False
        self._closed = True
        self._capacity.unregister(self)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._warmers:
            task.cancel()  # a cancelled boot closes its own sandbox
        workers = [*self._idle, *self._busy, *self._resetting]
        self._idle.clear()
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
        while self._tasks:  # resets and closes still finishing: they end quickly now
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._notify()

    # --- one call ------------------------------------------------------------------------

    async def _wait_slot(self) -> None:
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        if self._closed:
            self._slots.release()
            raise Cancelled()

    async def _run_on_worker(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        worker = await self._checkout()
        if self._closed:  # closed while this call booted its worker: aclose() never saw it
            self._busy.discard(worker)
            await worker.close()
            raise Cancelled()
        started = time.monotonic()
        try:
            outcome = await worker.call(request, on_event)
        except BaseException as exc:
            self._busy.discard(worker)
            self._spawn(self._discard(worker))
            if self._closed and not isinstance(exc, asyncio.CancelledError):
                raise Cancelled() from exc
            raise
        self._durations_ms.append((time.monotonic() - started) * 1000)
        self._busy.discard(worker)
        self._violations = 0
        if self.actor.pool.reuse and not self._closed and worker.alive:
            self._resetting.add(worker)
            reset_nowait = getattr(worker, "reset_nowait", None)
            if reset_nowait is None:
                self._spawn(self._recycle(worker))
            else:
                asyncio.get_running_loop().call_soon(self._recycle_soon, worker, reset_nowait)
        else:
            self._spawn(self._retire(worker))
        return outcome

    async def _checkout(self) -> Worker:
        """An idle worker, one being reset or warmed up (wait for it), or a fresh one;
        in ``_busy`` when returned."""
        while True:
            while self._idle:
                worker = self._idle.popleft()
                if worker.claim():
                    self._busy.add(worker)
                    self._top_up()
                    return worker
                self._spawn(self._discard(worker))
            if not self._resetting and not self._warming:
                worker = await self._boot()
                self._busy.add(worker)
                return worker
            await self._wait_until(
                lambda: bool(self._idle) or not (self._resetting or self._warming))

    async def _boot(self) -> Worker:
        if self._closed:
            raise Cancelled()
        self._booting += 1
        try:
            return await self._start_worker(warm=False)
        finally:
            self._booting -= 1

    async def _start_worker(self, *, warm: bool) -> Worker:
        """Boot a worker within the server's capacity; Busy when it does not fit."""
        memory_mb = self.actor.limits.memory_mb
        lease = self._capacity.try_lease(memory_mb)
        if lease is None and not warm:  # a call may take idle sandboxes of other actors
            lease = await self._capacity.reclaim(memory_mb, self)
        if lease is None:
            raise Busy(self._retry_after_ms(), "Busy: the server's sandbox capacity is in use "
                       f"({self._capacity.describe()})")
        self.boots += 1
        try:
            worker = await self._backend.start_worker(self.actor)
        except BaseException as exc:
            lease.release()
            if isinstance(exc, Exception):  # a cancelled boot is not a failure of the backend
                self.boot_failures += 1
            raise
        return _Leased(worker, lease)

    async def _shed_idle(self) -> bool:
        """Close one idle worker so that another actor's call can have its capacity."""
        if not self._idle:
            return False
        await self._idle.popleft().close()
        return True

    # --- background work -----------------------------------------------------------------

    def _recycle_soon(self, worker: Worker, reset_nowait: Callable[[], bool]) -> None:
        """Back to idle right after the call's answer went out, when the worker's reset has nothing
        to wait for (the common case: no task per call); otherwise in a task of its own."""
        if self._closed:  # aclose() closes it, with every worker being reset
            self._resetting.discard(worker)
            return
        if not reset_nowait():
            self._spawn(self._recycle(worker))
            return
        self._resetting.discard(worker)
        self._idle.append(worker)
        self._notify()
        self._top_up()

    async def _recycle(self, worker: Worker) -> None:
        try:
            await worker.reset()
        except Exception as exc:  # a worker that cannot be reset is not reused
            logger.info("%s: worker reset failed, closing it: %s", self.actor.id, exc)
            await worker.close()
        else:
            if self._closed:
                await worker.close()
            else:
                self._idle.append(worker)
        finally:
            self._resetting.discard(worker)
            self._notify()
            self._top_up()  # a closed worker leaves room

    async def _sweep_idle(self) -> None:
        """Close idle workers that are no longer alive, and boot their replacements."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            await asyncio.sleep(IDLE_SWEEP_S)
            for worker in [w for w in self._idle if not w.alive]:
                self._idle.remove(worker)
                if getattr(worker, "violation", ""):
                    self._violations += 1
                    pause = WARM_BACKOFF_S * 2.0 ** (self._violations - 1)
                    pause = min(WARM_BACKOFF_MAX_S, pause)
                    self._warm_after = loop.time() + pause
                self._spawn(self._discard(worker))
            self._top_up()

    async def _discard(self, worker: Worker) -> None:
        await worker.close()
        self._top_up()

    async def _retire(self, worker: Worker) -> None:
        """Close a worker whose call succeeded, one loop turn later: a task made now runs
        before the call's caller resumes, so the close (a kill, reads of its cgroups) would
        come before the answer is sent; this way it comes after (a cold call's time)."""
        await asyncio.sleep(0)
        await self._discard(worker)

    def _top_up(self) -> None:
        """Boot workers in the background until ``min_warm`` are idle or on their way,
        within ``max_workers`` workers in all."""
        if self._closed or asyncio.get_running_loop().time() < self._warm_after:
            return
        missing = self.actor.pool.min_warm - len(self._idle) - self._warming
        room = self.actor.pool.max_workers - self._workers()
        for _ in range(max(0, min(missing, room))):
            self._warming += 1
            self._warmers.add(self._spawn(self._warm_one()))

    async def _warm_one(self) -> None:
        try:
            worker = await self._start_worker(warm=True)
        except Busy as exc:  # the server is at capacity: warm sandboxes are a nicety
            logger.debug("%s: warm boot skipped: %s", self.actor.id, exc)
            return
        except Exception as exc:
            logger.warning("%s: warm boot failed: %s", self.actor.id, exc)
            return
        finally:
            self._warming -= 1
            self._notify()  # a call may wait for this boot, and must see it failed too
        if self._closed:
            await worker.close()
            return
        self._idle.append(worker)
        self._notify()

    def _workers(self) -> int:
        """Every worker of the pool: busy, idle, resetting or booting."""
        return (len(self._busy) + len(self._idle) + len(self._resetting) + self._warming
                + self._booting)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._warmers.discard)
        return task

    def _notify(self) -> None:
        """Wake everyone waiting for the pool to change. (No Condition: no lock to await,
        so a cancelled task can never leave one held.) With nobody waiting (every call on
        a warm pool), there is nothing to wake: a waiter checks its condition before it
        waits, with no await in between."""
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        self._waiting += 1
        try:
            while not condition():
                await self._changed.wait()
        finally:
            self._waiting -= 1

    def _retry_after_ms(self) -> int:
        """A guess at when a slot frees up: recent call time times the queue's depth, plus
        jitter (up to RETRY_JITTER of it)."""
        recent = self._durations_ms
        average = sum(recent) / len(recent) if recent else DEFAULT_CALL_MS
        rounds = 1 + self._queued // max(1, self.actor.pool.max_workers)
        # Up to half again at random: callers refused together must not retry in lockstep.
        return max(1, int(average * rounds * random.uniform(1, 1 + RETRY_JITTER)))



class _Leased:
    """A worker holding a lease of the server's capacity, given back when it is closed."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        self._worker = worker
        self._lease = lease
        # The worker's own methods: no coroutine of ours in between on every call.
        self.call: Callable[[CallRequest, EventSink], Coroutine[Any, Any, CallOutcome]] = \
            worker.call
        self.reset: Callable[[], Coroutine[Any, Any, None]] = worker.reset
        self.claim: Callable[[], bool] = worker.claim
        if hasattr(worker, "reset_nowait"):  # (a backend's worker may not have it)
            self.reset_nowait: Callable[[], bool] = worker.reset_nowait

    @property
    def alive(self) -> bool:
        return self._worker.alive

    async def close(self) -> None:
        """The lease goes back once the sandbox is gone, even when the caller is cancelled
        meanwhile (a call's task closing another actor's idle sandbox to take its place)."""
        try:
            await to_the_end(self._worker.close())
        finally:
            self._lease.release()

    def __getattr__(self, name: str) -> Any:
        """Anything else a backend's worker offers passes through."""
        return getattr(self._worker, name)
