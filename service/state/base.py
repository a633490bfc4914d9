"""The contract every state store implements (one file per store beside this one).

A store holds text values under full keys (``{namespace}:{actor_id}:{key}``, built by the
session, never by a store). Each value is a JSON text, so the host's own reader (which
reads the same Redis keys) understands it. ``ttl_s`` > 0: a write (re)starts the key's
expiry; 0: keys never expire.

The same contract tests (tests/state/test_store_contract.py) run against every store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

R = TypeVar("R")
# An atomic read-modify-write: old text (None: no such key) -> (new text or None to delete,
# what the operation returns). It may raise StateOpError; nothing is written then.
Change = Callable[[str | None], tuple[str | None, R]]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class StateOpError(Exception):
    """An operation the script asked for cannot apply (increment of a non-integer...).

    The script sees it as an exception of type ``error_type``; the call goes on.
    """

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


class StoreDown(Exception):
    """The store cannot be reached or failed; the call fails with -32009."""


@runtime_checkable
class StateStore(Protocol):
    """Text values under full keys; every operation is atomic."""

    name: str  # "embedded" or "redis"

    async def get(self, key: str) -> str | None:
        """The value, or None when there is none (or it expired)."""
        ...

    async def set(self, key: str, value: str) -> None:
        """Write the value and restart its expiry."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the key; whether it existed."""
        ...

    async def increment(self, key: str, amount: int) -> int:
        """Add ``amount`` to an integer value (a missing key counts as 0), atomically across
        calls and servers; StateOpError when the value is not a 64-bit integer text."""
        ...

    async def update(self, key: str, change: Change[R]) -> R:
        """Apply ``change`` atomically (no other writer in between); restarts the expiry."""
        ...

    async def check(self) -> dict[str, Any]:
        """Reach the store for real (StoreDown if not); what it is, for ``service doctor``."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


def parse_integer(text: str | None) -> int:
    """The integer a value holds for increment (as Redis reads it), else StateOpError."""
    if text is None:
        return 0
    digits = text[1:] if text.startswith("-") else text
    if digits.isascii() and digits.isdigit() and (digits == "0" or not digits.startswith("0")):
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    raise StateOpError("TypeError", "value is not an integer or out of range")


def add_integers(current: int, amount: int) -> int:
    """``current + amount`` within 64 bits, else StateOpError (as Redis answers)."""
    total = current + amount
    if not INT64_MIN <= total <= INT64_MAX:
        raise StateOpError("OverflowError", "increment or decrement would overflow")
    return total
