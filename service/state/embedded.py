"""The embedded store: in this process, lost on restart, not shared between servers.

The default when ``[default.state] redis_url`` is empty, so one machine works out of the
box. Same semantics as the Redis store; one lock makes every operation atomic (calls of
several actors run concurrently on this event loop, and a store may be used from threads).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from service.state.base import Change, R, add_integers, parse_integer

PURGE_EVERY = 1024  # writes between two sweeps of expired keys


class EmbeddedStore:
    """A dict of key -> (text, expiry on the monotonic clock or None)."""

    name = "embedded"

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._data: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    async def get(self, key: str) -> str | None:
        with self._lock:
            return self._read(key)

    async def set(self, key: str, value: str) -> None:
        with self._lock:
            self._write(key, value)

    async def delete(self, key: str) -> bool:
        with self._lock:
            existed = self._read(key) is not None
            self._data.pop(key, None)
            return existed

    async def increment(self, key: str, amount: int) -> int:
        with self._lock:
            total = add_integers(parse_integer(self._read(key)), amount)
            self._write(key, str(total))
            return total

    async def update(self, key: str, change: Change[R]) -> R:
        with self._lock:
            new, result = change(self._read(key))
            if new is None:
                self._data.pop(key, None)
            else:
                self._write(key, new)
            return result

    async def check(self) -> dict[str, Any]:
        with self._lock:
            keys = len(self._data)
        return {"store": self.name, "keys": keys, "ttl_s": self.ttl_s,
                "note": "in-process: lost on restart, not shared between servers"}

    async def aclose(self) -> None:
        """Nothing to release."""

    def _read(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        text, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return text

    def _write(self, key: str, value: str) -> None:
        expires = time.monotonic() + self.ttl_s if self.ttl_s > 0 else None
        self._data[key] = (value, expires)
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            self._purge()

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[key]
