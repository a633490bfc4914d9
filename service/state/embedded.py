"""The embedded store: in this process, lost on restart, not shared between servers.

The default when ``[default.state] redis_url`` is empty, so one machine works out of the
box. Same semantics as the Redis store; one lock makes every operation atomic (calls of
several actors run concurrently on this event loop, and a store may be used from threads).

It holds at most ``max_bytes`` of keys and values (UTF-8): this process's memory is the
server's, and expiry alone does not bound it. A write that would go over it (once expired
keys are swept) fails like a Redis at its ``maxmemory``: StoreDown, the call gets -32009.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from service.state.base import (
    Change,
    R,
    StoreDown,
    TooLarge,
    add_integers,
    parse_integer,
    text_size,
)

PURGE_EVERY = 1024  # writes between two sweeps of expired keys
MAX_BYTES = 256 * 1024 * 1024  # the default of state.embedded_max_bytes


class _Entry(NamedTuple):
    text: str
    size: int  # UTF-8 bytes of the key and the text: what counts towards max_bytes
    expires: float | None  # on the monotonic clock; None: never


class EmbeddedStore:
    """A dict of key -> entry, and the bytes all entries hold."""

    name = "embedded"

    def __init__(self, ttl_s: int, max_bytes: int = MAX_BYTES) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        # in write order, which with one ttl_s for all is the order they expire in
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0  # the sum of the entries' sizes
        self._lock = threading.Lock()
        self._writes = 0

    async def get(self, key: str, max_bytes: int | None = None) -> str | None:
        with self._lock:
            return self._read(key, max_bytes)

    async def set(self, key: str, value: str) -> None:
        with self._lock:
            self._write(key, value)

    async def delete(self, key: str) -> bool:
        with self._lock:
            existed = self._read(key, None) is not None
            self._forget(key)
            return existed

    async def increment(self, key: str, amount: int) -> int:
        with self._lock:
            total = add_integers(parse_integer(self._read(key, None)), amount)
            self._write(key, str(total))
            return total

    async def update(self, key: str, change: Change[R],
                     max_bytes: Callable[[], int] | None = None) -> R:
        with self._lock:
            new, result = change(self._read(key, None if max_bytes is None else max_bytes()))
            if new is None:
                self._forget(key)
            else:
                self._write(key, new)
            return result

    async def check(self) -> dict[str, Any]:
        with self._lock:
            keys, used = len(self._data), self._bytes
        return {"store": self.name, "keys": keys, "bytes": used, "max_bytes": self.max_bytes,
                "ttl_s": self.ttl_s,
                "note": "in-process: lost on restart, not shared between servers"}

    async def aclose(self) -> None:
        """Nothing to release."""

    def _read(self, key: str, max_bytes: int | None) -> str | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= time.monotonic():
            self._forget(key)
            return None
        value_size = entry.size - text_size(key)
        if max_bytes is not None and value_size > max_bytes:
            raise TooLarge(value_size)
        return entry.text

    def _write(self, key: str, value: str) -> None:
        size = text_size(key) + text_size(value)
        if self._bytes_after(key, size) > self.max_bytes:
            self._purge()  # expired keys first: they may be all that fills it
            if self._bytes_after(key, size) > self.max_bytes:
                raise StoreDown(f"the embedded store is full ({self.max_bytes} bytes of keys "
                                "and values, state.embedded_max_bytes)")
        self._forget(key)
        expires = time.monotonic() + self.ttl_s if self.ttl_s > 0 else None
        self._data[key] = _Entry(value, size, expires)
        self._bytes += size
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            self._purge()

    def _bytes_after(self, key: str, size: int) -> int:
        old = self._data.get(key)
        return self._bytes - (old.size if old else 0) + size

    def _forget(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def _purge(self) -> None:
        """Forget the expired keys: the oldest writes, first. It scanned every key, every
        PURGE_EVERY writes and, with the store full, every write: a million keys held the
        event loop for ~0.1 s at each."""
        now = time.monotonic()
        while self._data:
            key, entry = next(iter(self._data.items()))
            if entry.expires is None or entry.expires > now:
                return
            self._forget(key)
