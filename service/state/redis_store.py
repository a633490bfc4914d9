"""The Redis store (redis-py asyncio): shared between servers, survives restarts.

Only the server's own ``[default.state] redis_url`` is ever dialled, never a URL a client
sent. ``increment`` is INCRBY (atomic in Redis); list operations are optimistic
transactions (WATCH the key, read, MULTI/SET/EXEC, retry when another writer won), so a
value stays one JSON text that the host's own reader can GET.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.state.base import Change, R, StateOpError, StoreDown

log = logging.getLogger(__name__)

SCRIPT_ERRORS = ("WRONGTYPE", "not an integer", "overflow")  # the script's fault, not the store's
UPDATE_RETRIES = 64
MAX_CONNECTIONS = 32  # per server  # optimistic transactions lost to other writers before giving up


def redacted(url: str) -> str:
    """The URL without its password (for logs and ``service doctor``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisStore:
    """Values as Redis strings; errors of the connection become StoreDown."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float) -> None:
        self.url = url
        self.ttl_s = ttl_s
        # Blocking: a burst of calls waits for a connection instead of failing the call.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, decode_responses=True, health_check_interval=30)
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool

    async def get(self, key: str) -> str | None:
        async with self._errors():
            value = await self._redis.get(key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        async with self._errors():
            await self._redis.set(key, value, ex=self.ttl_s or None)

    async def delete(self, key: str) -> bool:
        async with self._errors():
            return bool(await self._redis.delete(key))

    async def increment(self, key: str, amount: int) -> int:
        async with self._errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.incrby(key, amount)
            if self.ttl_s:
                pipe.expire(key, self.ttl_s)
            results = await pipe.execute()
        return int(results[0])

    async def update(self, key: str, change: Change[R]) -> R:
        async with self._errors():
            for _ in range(UPDATE_RETRIES):
                try:
                    return await self._update_once(key, change)
                except WatchError:
                    continue
        raise StoreDown(f"{key}: {UPDATE_RETRIES} concurrent updates in a row, giving up")

    async def _update_once(self, key: str, change: Change[R]) -> R:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            old = await pipe.get(key)
            new, result = change(None if old is None else str(old))
            pipe.multi()
            if new is None:
                pipe.delete(key)
            else:
                pipe.set(key, new, ex=self.ttl_s or None)
            await pipe.execute()
            return result

    async def check(self) -> dict[str, Any]:
        async with self._errors():
            info = await self._redis.info("server")
        return {"store": self.name, "url": redacted(self.url), "ttl_s": self.ttl_s,
                "redis_version": info.get("redis_version", "?")}

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _errors(self) -> _RedisErrors:
        return _RedisErrors(self.url)


class _RedisErrors:
    """Turns redis-py's exceptions into the store contract's (async context manager)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, StateOpError | StoreDown):
            return
        if isinstance(exc, UnicodeDecodeError):  # bytes someone else wrote under the key
            raise StateOpError("ValueError", "the value under this key is not UTF-8") from None
        if isinstance(exc, ResponseError) and any(w in str(exc) for w in SCRIPT_ERRORS):
            kind = "OverflowError" if "overflow" in str(exc) else "TypeError"
            raise StateOpError(kind, str(exc)) from None
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | RedisError | OSError):
            log.warning("state store %s failed: %s", redacted(self.url), exc)
            raise StoreDown(f"redis {redacted(self.url)}: {exc}") from None
