"""The event loop the servers run on: asyncio's, polling a little before it sleeps.

A process asleep in ``epoll_wait`` is woken by an interrupt to its CPU, and inside a
virtual machine that costs tens of µs (the host must wake the halted virtual CPU). A
call makes the server wait twice where the answer usually comes within tens of µs: for
the sandbox's reply, and between a result and the next request of a caller that calls
in a loop. So before it would sleep, the loop polls (``epoll_wait`` with no timeout)
for up to ``busy_poll_us``: what arrives meanwhile is read at once, with no wake-up.

It costs CPU only when the server has nothing to do, at most ``busy_poll_us`` per
wait: under load there is always something to do, and an idle server sleeps after
one spin. ``busy_poll_us = 0`` turns it off (asyncio's own loop).
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

# Heavy steps take at most this share of the loop's time: the turn that ran one (25 ms,
# say) is followed by as long again for everything else before the next. A request that
# needs a few turns (a new connection's /healthz: accept, read, answer) is then never stuck
# behind a heavy step in each of them.
HEAVY_SHARE = 0.5


class BusyPollSelector(selectors.DefaultSelector):
    """The default selector, polling for up to ``spin_s`` before a wait that could sleep;
    and, each time it has polled, handing the next turn to a heavy step (heavy_turn), once
    the rest of the loop has had its share of the time (HEAVY_SHARE)."""

    def __init__(self, spin_s: float) -> None:
        super().__init__()
        self._spin_s = spin_s
        self.heavy_ran = False  # a heavy step ran since the last poll
        self.waiting: deque[asyncio.Future[None]] = deque()  # heavy steps, for their turn
        self.released: asyncio.Future[None] | None = None  # the turn given, not yet taken
        self.quiet_until = 0.0  # no heavy step gets a turn before this (perf_counter)
        self._turn_began = time.perf_counter()  # when the loop's current turn began

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ran, self.heavy_ran = self.heavy_ran, False
        if ran or self.waiting:  # (the clock is read only then: this is every turn's path)
            now = time.perf_counter()
            if ran:  # the turn that just ended ran one: the rest of the loop gets as long again
                self.quiet_until = now + (now - self._turn_began) * (1 - HEAVY_SHARE) \
                    / HEAVY_SHARE
            if self.waiting:  # no sleep past the time the next heavy step is due
                due = max(0.0, self.quiet_until - now)
                timeout = due if timeout is None else min(timeout, due)
        ready = self._select(timeout)
        self._turn_began = time.perf_counter()
        # the next turn, once what the last heavy step made ready has been read, and the
        # rest of the loop had its share of the time since
        while not ran and self.released is None and self.waiting \
                and self._turn_began >= self.quiet_until:
            turn = self.waiting.popleft()
            if not turn.done():  # (cancelled)
                turn.get_loop().call_soon(_set_done, turn)
                self.released = turn
        return ready

    def _select(self, timeout: float | None) -> list[tuple[Any, int]]:
        if (timeout is not None and timeout <= 0) or self._spin_s <= 0:
            return super().select(timeout)
        spin_s = self._spin_s if timeout is None else min(self._spin_s, timeout)
        deadline = time.perf_counter() + spin_s
        while not (ready := super().select(0)):
            if time.perf_counter() >= deadline:
                rest = None if timeout is None else max(0.0, timeout - spin_s)
                return super().select(rest)
        return ready


# Set in a task serving a frame heavy enough to decode in a turn of its own: what it does
# with that frame's values later (write them to a sandbox) is heavy too (heavy_turn).
HEAVY_FRAME: ContextVar[bool] = ContextVar("heavy_frame", default=False)
# the selector of each loop loop_factory made
_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BusyPollSelector] = \
    weakref.WeakKeyDictionary()


def loop_factory(busy_poll_us: int) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the servers' event loop (no busy poll when ``busy_poll_us`` is 0)."""
    def make() -> asyncio.AbstractEventLoop:
        selector = BusyPollSelector(max(busy_poll_us, 0) / 1e6)
        loop = asyncio.SelectorEventLoop(selector)
        _SELECTORS[loop] = selector
        return loop

    return make


async def heavy_turn(first: bool = False) -> None:
    """Wait, if another heavy step (a large frame to decode, a large value to write) ran
    since the loop last read its sockets, or the rest of the loop has not had its share of
    the time since one ran (HEAVY_SHARE), for a turn of the loop of its own: one heavy step
    a turn, in the order they came, the sockets read between any two. Each is bounded, but
    those that were ready together ran back to back (forty connections' 1 MiB frames, 40-60
    ms each to decode: 1-2 s with /healthz waiting). ``first``: before the steps already
    waiting (freeing memory, before more is taken). At once on a loop loop_factory did not
    make."""
    loop = asyncio.get_running_loop()
    selector = _SELECTORS.get(loop)
    if selector is None:
        return
    if selector.heavy_ran or selector.waiting or selector.released is not None \
            or time.perf_counter() < selector.quiet_until:
        turn = loop.create_future()
        if first:
            selector.waiting.appendleft(turn)
        else:
            selector.waiting.append(turn)
        try:
            await turn
        finally:
            if selector.released is turn:
                selector.released = None
    selector.heavy_ran = True


# the tasks of drop_in_turn, until they are done
_DROPPING: set[asyncio.Task[None]] = set()


def drop_in_turn(value: Any, then: Callable[[], None]) -> None:
    """Drop ``value`` (a large decoded value: freeing 350,000 objects takes ~6 ms) in a heavy
    step of its own, then call ``then`` (also when the task is cancelled, even before it
    began); the caller holds no other reference to it once it returns. Freed wherever its
    last reference went, it took the loop in whichever turn that was, on top of the heavy
    step already in it."""
    task = asyncio.get_running_loop().create_task(_drop(value))
    _DROPPING.add(task)
    task.add_done_callback(_DROPPING.discard)
    task.add_done_callback(lambda _: then())


async def _drop(value: Any) -> None:
    await heavy_turn(first=True)
    del value


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def run(main: Any, busy_poll_us: int) -> Any:
    """``asyncio.run(main)`` on the servers' event loop."""
    with asyncio.Runner(loop_factory=loop_factory(busy_poll_us)) as runner:
        return runner.run(main)


class Turns:
    """Takes turns with the rest of the loop while working through what arrived at once.

    What a client sent together (frames, pings) or a sandbox wrote together (outputs, log
    lines) is waiting already: reading the next one never suspends, so the loop runs
    nothing else until all of it is handled (100,000 pings, 20,000 notifications). After
    ``items`` of them, or ``size`` bytes, :meth:`took` yields one turn of the loop."""

    def __init__(self, items: int = 64, size: int = 256 << 10) -> None:
        self._items = items
        self._size = size
        self._taken = 0
        self._bytes = 0

    async def took(self, size: int = 0) -> None:
        """One more handled, of ``size`` bytes; lets the loop run when the turn is up."""
        self._taken += 1
        self._bytes += size
        if self._taken >= self._items or self._bytes >= self._size:
            self._taken = self._bytes = 0
            await asyncio.sleep(0)
