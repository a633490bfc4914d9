"""The contract every state store implements (one file per store beside this one).

A store holds text values under full keys (``{namespace}:{actor_id}:{key}``, built by the
session, never by a store). Each value is a JSON text, so the host's own reader (which
reads the same Redis keys) understands it. ``ttl_s`` > 0: a write (re)starts the key's
expiry; 0: a write clears it (keys never expire).

Keys and values are valid Unicode without lone surrogates (the session makes sure): both
stores must be able to write them as UTF-8. Sizes are UTF-8 bytes (``text_size``). A
reader may pass the most bytes it will take: a larger stored value is not handed over
(TooLarge), so a value written by someone else cannot make the server read more than
the call may spend. Every error a store raises is one of this module's, with the same
type and message on every store.

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
INT64_DIGITS = 19  # a longer run of digits is out of range (and int() would be slow on it)
# What the script sees when increment cannot apply (Redis's own words, so both stores agree).
NOT_AN_INTEGER = "value is not an integer or out of range"
WOULD_OVERFLOW = "increment or decrement would overflow"


class StateOpError(Exception):
    """An operation the script asked for cannot apply (increment of a non-integer...).

    The script sees it as an exception of type ``error_type``; the call goes on.
    """

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


class StoreDown(Exception):
    """The store cannot be reached or failed (or is full); the call fails with -32009."""


class TooLarge(Exception):
    """The stored value is larger than the reader would take; nothing was read."""

    def __init__(self, size: int) -> None:
        self.size = size
        super().__init__(f"the value is {size} bytes")


@runtime_checkable
class StateStore(Protocol):
    """Text values under full keys; every operation is atomic."""

    name: str  # "embedded" or "redis"

    async def get(self, key: str, max_bytes: int | None = None) -> str | None:
        """The value, or None when there is none (or it expired); TooLarge when it is over
        ``max_bytes`` (None: any size)."""
        ...

    async def set(self, key: str, value: str) -> None:
        """Write the value and restart its expiry."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the key; whether it existed."""
        ...

    async def increment(self, key: str, amount: int) -> int:
        """Add ``amount`` (a 64-bit integer) to an integer value (a missing key counts as 0),
        atomically across calls and servers; StateOpError when the value is not a 64-bit
        integer text (parse_integer) or the sum would not be one (add_integers)."""
        ...

    async def update(self, key: str, change: Change[R],
                     max_bytes: Callable[[], int] | None = None) -> R:
        """Apply ``change`` atomically (no other writer in between); restarts the expiry.

        ``max_bytes()`` is asked before each read of the old value (an optimistic store
        reads again after losing to another writer): over it, TooLarge and nothing is read.
        """
        ...

    async def check(self) -> dict[str, Any]:
        """Reach the store for real (StoreDown if not); what it is, for ``service doctor``."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


def text_size(text: str) -> int:
    """The UTF-8 bytes of a key or value: what a store holds and the budget counts."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def parse_integer(text: str | None) -> int:
    """The integer a value holds for increment, read as Redis reads it (no sign but a
    leading ``-``, no leading zero, no ``-0``, 64 bits), else StateOpError."""
    if text is None or text == "0":
        return 0
    digits = text[1:] if text.startswith("-") else text
    if (1 <= len(digits) <= INT64_DIGITS and digits[0] != "0" and digits.isascii()
            and digits.isdigit()):
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    raise StateOpError("TypeError", NOT_AN_INTEGER)


def add_integers(current: int, amount: int) -> int:
    """``current + amount`` within 64 bits, else StateOpError (as Redis answers)."""
    total = current + amount
    if not INT64_MIN <= total <= INT64_MAX:
        raise StateOpError("OverflowError", WOULD_OVERFLOW)
    return total
