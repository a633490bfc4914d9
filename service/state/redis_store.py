"""The Redis store (redis-py asyncio): shared between servers, survives restarts.

Only the server's own ``[default.state] redis_url`` is ever dialled, never a URL a client
sent. ``increment`` is INCRBY (atomic in Redis); list operations are optimistic
transactions (WATCH the key, read, MULTI/SET/EXEC, retry when another writer won), so a
value stays one JSON text that the host's own reader can GET.

Two short Lua scripts do what plain commands cannot: READ hands a value over only when it
fits what the caller will take (a value the host wrote may be any size), and INCREMENT
adds and sets the expiry in one step, so a failed increment leaves the expiry alone and
ttl 0 clears it, as on the embedded store. Errors reach the script in the embedded
store's words: never Redis's command text, which names the internal key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError

from service.state.base import (
    NOT_AN_INTEGER,
    WOULD_OVERFLOW,
    Change,
    R,
    StateOpError,
    StoreDown,
    TooLarge,
)

log = logging.getLogger(__name__)

# Redis's answer (words in it) -> what the script sees: the script's fault, not the store's.
SCRIPT_ERRORS = {
    "WRONGTYPE": ("TypeError", "the value under this key is not a string"),
    "value is not an integer": ("TypeError", NOT_AN_INTEGER),
    "increment or decrement would overflow": ("OverflowError", WOULD_OVERFLOW),
}
UPDATE_RETRIES = 64  # optimistic transactions lost to other writers before giving up
MAX_CONNECTIONS = 32  # per server
# KEYS[1], ARGV[1] = the most bytes to take: the value, nil (no key), or its size (too big).
READ = """
local size = redis.call('STRLEN', KEYS[1])
if size > tonumber(ARGV[1]) then return size end
return redis.call('GET', KEYS[1])
"""
# KEYS[1], ARGV[1] = amount, ARGV[2] = ttl_s. The total is read back as text: a Lua number
# is a double, which would round a 64-bit total.
INCREMENT = """
redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])
else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""
ANY_SIZE = 2**62  # READ's limit when the caller sets none


def redacted(url: str) -> str:
    """The URL without its password (for logs and ``service doctor``): the one before the
    last @, even one holding a / a parser would stop at, and a ``password=`` parameter."""
    url = _USERINFO_PASSWORD.sub(r"\1\2:***@", url)
    return _QUERY_PASSWORD.sub(r"\1***", url)


_USERINFO_PASSWORD = re.compile(r"^([a-z+]+://)([^:@/]*):[^@]*@", re.I)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.I)


class RedisStore:
    """Values as Redis strings; errors of the connection become StoreDown."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float) -> None:
        self.url = url
        self.ttl_s = ttl_s
        # Blocking: a burst of calls waits for a connection instead of failing the call. A
        # pooled connection to a Redis that restarted fails once: tried again once, on a fresh
        # one (as the cluster's client does), it must not fail an operation of a Redis that
        # answers; a Redis that is gone refuses the second try at once too.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, decode_responses=True, health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        self._redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool

    async def get(self, key: str, max_bytes: int | None = None) -> str | None:
        async with self._errors():
            return _fitting(await self._redis.eval(READ, 1, key, _limit(max_bytes)))

    async def set(self, key: str, value: str) -> None:
        async with self._errors():
            await self._redis.set(key, value, ex=self.ttl_s or None)

    async def delete(self, key: str) -> bool:
        async with self._errors():
            return bool(await self._redis.delete(key))

    async def increment(self, key: str, amount: int) -> int:
        async with self._errors():
            total = await self._redis.eval(INCREMENT, 1, key, amount, self.ttl_s)
        return int(total)

    async def update(self, key: str, change: Change[R],
                     max_bytes: Callable[[], int] | None = None) -> R:
        async with self._errors():
            for _ in range(UPDATE_RETRIES):
                try:
                    return await self._update_once(key, change, max_bytes)
                except WatchError:
                    continue
        raise StoreDown(f"{UPDATE_RETRIES} concurrent updates of one key in a row, giving up")

    async def _update_once(self, key: str, change: Change[R],
                           max_bytes: Callable[[], int] | None) -> R:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            limit = _limit(None if max_bytes is None else max_bytes())
            new, result = change(_fitting(await pipe.eval(READ, 1, key, limit)))
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


def _limit(max_bytes: int | None) -> int:
    return ANY_SIZE if max_bytes is None else max_bytes


def _fitting(reply: Any) -> str | None:
    """READ's reply as the value; TooLarge when it answered the size instead."""
    if isinstance(reply, int):
        raise TooLarge(reply)
    return None if reply is None else str(reply)


class _RedisErrors:
    """Turns redis-py's exceptions into the store contract's (async context manager)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, UnicodeDecodeError | RedisError | OSError):
            return  # ours (StateOpError, TooLarge...) or a bug: as it is
        if isinstance(exc, UnicodeDecodeError):  # bytes someone else wrote under the key
            raise StateOpError("ValueError", "the value under this key is not UTF-8") from None
        if isinstance(exc, ResponseError):
            # Redis's own words (after what redis-py adds of a pipeline's command and key;
            # Redis 6 puts the script's name first, Redis 7 after)
            words = str(exc).rpartition("of pipeline caused error: ")[2]
            for said, (error_type, message) in SCRIPT_ERRORS.items():
                if said in words:
                    raise StateOpError(error_type, message) from None
        log.warning("state store %s failed: %s", redacted(self.url), exc)
        raise StoreDown(f"redis {redacted(self.url)}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """What the client may read of a store failure: Redis's refusals can quote the command
    (and so the internal key), so only their kind goes out; the log has the rest."""
    if isinstance(exc, ResponseError):
        return f"the store refused the operation ({type(exc).__name__})"
    return str(exc)
