"""What the cyclic garbage collector scans: the heap a server keeps, and the large values
it parks out of the collector's reach while their calls hold them.

Every collection scans the containers of its generation with the event loop waiting, and
a full one scans them all. Two kinds of container need no scanning:

- **What the start made** (modules, settings, compiled schemas: ~50,000 objects) lives as
  long as the server. Once started, it is frozen (``gc.freeze``: the collector never looks
  at it again).
- **A large decoded JSON value** (a 1 MiB frame of small lists: 350,000 lists) holds no
  reference cycle: decoded JSON never does. Left to the collector, each was scanned by a
  young collection, then with others by an older one, then by every full one while its
  call ran: forty such frames in flight held the loop 100-500 ms at a time. While the
  server serves (:func:`settled`), ``jsonfast.loads`` parks such a value as soon as it is
  decoded, the collector still paused (:meth:`Heap.park`): it is frozen, with everything
  else alive at that moment. Freezing costs nothing (the collector's lists are spliced),
  and a frozen value is still freed by its reference count when its call drops it.

What was alive when a value was parked and later becomes cyclic garbage (a closed
connection's objects, say) stays until the next settle: unfreeze, one full collection,
freeze again. The frame or call that parked a value holds it (:meth:`Heap.held_since`)
until it is done with it (:meth:`Heap.release`); a settle runs once none is held, so its
collection scans what serving keeps, not the parked values. Settles never take more than
SETTLE_SHARE of the time (one that took 20 ms lets the next run 2 s later at the
soonest), and values held nonstop are settled over after MOST_PARKED_S: the one stall
such a flood causes per MOST_PARKED_S, its collection scanning them all.

The collector is one per process, and so is its :data:`HEAP`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

PARK_CONTAINERS = 16_384  # a decoded value with more opening brackets than this is parked
MOST_PARKED_S = 60.0  # values held nonstop since the last settle: settled over after this
SETTLE_SHARE = 0.01  # settles take at most this share of the time
CHECK_EVERY_S = 0.25


class Heap:
    """The process's collector: what is frozen, which parked values are held, when the
    next settle is due."""

    def __init__(self) -> None:
        self.serving = False  # values are parked only while settles keep up (settled)
        self.parks = 0  # values parked so far
        self.held = 0  # parked values their frames and calls still hold
        self.first_parked: float | None = None  # the first since the last settle
        self.next_settle = 0.0  # the soonest the next may run (SETTLE_SHARE)
        self.settles = 0

    def park(self) -> None:
        """Freeze everything alive, with the value just decoded (the collector paused).
        Only on the event loop's thread, which keeps the counts."""
        if not self.serving or threading.current_thread() is not threading.main_thread():
            return
        gc.freeze()
        self.parks += 1
        if self.first_parked is None:
            self.first_parked = time.monotonic()

    def held_since(self, parks: int) -> int:
        """Hold the values parked since ``parks`` (read before decoding): how many."""
        count = self.parks - parks
        self.held += count
        return count

    def release(self, count: int) -> None:
        """The holder is done with ``count`` values it held: settle once none is held."""
        if count:
            self.held -= count
            if self.held == 0:
                asyncio.get_running_loop().call_soon(self.settle_if_due)

    def due(self, now: float) -> bool:
        if self.first_parked is None or now < self.next_settle:
            return False
        return self.held == 0 or now - self.first_parked >= MOST_PARKED_S

    def settle_if_due(self) -> None:
        if self.serving and self.due(time.monotonic()):
            took_s = self.settle()
            log.debug("heap settled in %.1f ms", took_s * 1000)

    def settle(self, trim: bool = False) -> float:
        """Unfreeze, collect, freeze what is left; ``trim``: and give the heap's free
        memory back to the system (glibc's malloc_trim; elsewhere, nothing). Its seconds."""
        started = time.monotonic()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        if trim:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).malloc_trim(0)
        ended = time.monotonic()
        self.first_parked = None
        self.next_settle = ended + (ended - started) / SETTLE_SHARE
        self.settles += 1
        return ended - started

    async def keep_settled(self) -> None:
        """Settle whenever one is due, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            self.settle_if_due()


HEAP = Heap()


def settle_heap() -> None:
    """Once started: collect the start's garbage, then freeze what is left (modules,
    settings, compiled schemas) out of the collector's reach, and trim the heap (~3 MB of
    idle RSS). A full collection took ~10 ms with the loop waiting when they were scanned.
    What the start made and a later ``load`` replaces is freed as usual, and at the next
    settle if it sits in a reference cycle."""
    HEAP.settle(trim=True)


@contextlib.asynccontextmanager
async def settled() -> AsyncIterator[None]:
    """Serving: settle_heap, then park large values and settle whenever one is due, until
    the block ends (everything is unfrozen then)."""
    settle_heap()
    task = asyncio.create_task(HEAP.keep_settled())
    HEAP.serving = True
    try:
        yield
    finally:
        HEAP.serving = False
        HEAP.first_parked = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
