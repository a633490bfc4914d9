"""The server's sandbox budget: how many sandboxes may be live, and how much memory they commit.

Every pool of a runtime takes a :class:`Lease` from one :class:`SandboxCapacity` before it
boots a sandbox (warm or for a call) and gives it back when that sandbox is closed, so the
sum of ``limits.memory_mb`` over the live sandboxes never passes ``capacity.memory_mb`` and
their number never passes ``capacity.max_sandboxes``, whatever the manifests ask for. A call
that finds the budget used first takes it back from idle sandboxes of other actors; when
nothing is idle, it fails with Busy (-32008) rather than wait for a sandbox that may never
free up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# An idle-sandbox reclaimer of a pool: closes one idle sandbox, True when it did.
Shed = Callable[[], Awaitable[bool]]


@dataclass
class Lease:
    """One live sandbox's share of the budget; ``release`` is idempotent."""

    capacity: SandboxCapacity
    memory_mb: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.capacity.give_back(self)


class SandboxCapacity:
    """Live sandboxes and their committed memory, every actor together."""

    def __init__(self, max_sandboxes: int = sys.maxsize, memory_mb: float = float("inf")) -> None:
        self.max_sandboxes = max_sandboxes
        self.memory_mb = memory_mb
        self.sandboxes = 0
        self.committed_mb: float = 0
        self._shedders: dict[object, Shed] = {}

    def try_lease(self, memory_mb: float) -> Lease | None:
        """A lease for one sandbox of ``memory_mb``, or None when it does not fit now."""
        if self.sandboxes + 1 > self.max_sandboxes or (
                self.committed_mb + memory_mb > self.memory_mb):
            return None
        self.sandboxes += 1
        self.committed_mb += memory_mb
        return Lease(self, memory_mb)

    def give_back(self, lease: Lease) -> None:
        self.sandboxes -= 1
        self.committed_mb -= lease.memory_mb

    def register(self, owner: object, shed: Shed) -> None:
        """``owner`` (a pool) keeps idle sandboxes that ``shed`` can close for others."""
        self._shedders[owner] = shed

    def unregister(self, owner: object) -> None:
        self._shedders.pop(owner, None)

    async def reclaim(self, memory_mb: float, requester: object) -> Lease | None:
        """A lease, after closing idle sandboxes of other owners as long as that helps."""
        lease = self.try_lease(memory_mb)
        for owner, shed in list(self._shedders.items()):
            if lease is not None:
                break
            if owner is requester:
                continue
            while lease is None and await shed():
                lease = self.try_lease(memory_mb)
        if lease is not None:
            logger.debug("reclaimed idle sandboxes for a %s MiB sandbox", memory_mb)
        return lease

    def describe(self) -> str:
        return (f"{self.sandboxes} of {self.max_sandboxes} sandboxes, "
                f"{self.committed_mb:g} of {self.memory_mb:g} MiB")
