"""The stream layout both roles share, and the one place that opens Redis connections.

Keys, all under ``<key_prefix>:``:

- ``calls:<actor_id>``: a stream of calls, read by the consumer group ``workers``. A worker
  acks *and deletes* an entry once the call is answered, so the stream holds only calls
  queued or running: its length is the actor's backlog.
- ``events:<front_id>``: a stream per front process (a fresh id at each start): outputs,
  logs and answers of its calls, and replies to its ``load`` broadcasts. The front trims
  what it has read (MINID); workers add with NOMKSTREAM, so a gone front's stream is not
  brought back, and it expires on its own.
- ``control``: a stream every worker reads (no group): ``cancel`` and ``load`` broadcasts.
- ``worker:<worker_id>``: the worker's registration (JSON), set with a TTL of
  ``worker_timeout_s`` at each heartbeat: it exists exactly while the worker is alive.
- ``workers``: a sorted set indexing the registrations (members whose key is gone are dead).

Stream entries carry one field, ``m``: a JSON message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import RpcError, SandboxUnavailable
from service.settings import ClusterSettings

log = logging.getLogger(__name__)

GROUP = "workers"
FIELD = "m"
BACKEND = "cluster"  # data.backend of the -32009 errors the cluster itself raises
BROKER_DOWN = "broker unavailable"
# A command Redis does not answer in this long (a silent network, a stopped server) counts
# as Redis gone: the front answers -32009 and /healthz says 503, rather than every call
# hanging. Not tried again: a second wait would only double the hang.
COMMAND_TIMEOUT_S = 2.0
# Commands in flight at once per client: past it a command waits for a free connection
# (up to COMMAND_TIMEOUT_S), as a burst of calls must not read as Redis gone. A blocking
# client holds one per blocking read (a reader per actor): that pool is not capped.
POOL_CONNECTIONS = 100
CONNECT_TIMEOUT_S = 2.0
BLOCK_MS = 1000  # longest wait of a blocking read: loops notice shutdown this often
# Redis failures a loop survives by reconnecting (ConnectionError covers refused/reset).
BROKER_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
# redis-py annotates replies for sync and async, bytes and str clients at once; ours always
# decode to str, and the replies' shapes are those the Redis docs give for each command.
RedisClient = Any

# Add a call unless the actor's stream already holds ``limit`` calls (queued or running):
# the check and the add are one atomic step, so fronts never overshoot the limit together.
# No MAXLEN: the limit bounds a calls stream (each entry is deleted when its call ends),
# and trimming to stream_maxlen dropped accepted calls once the limit was larger.
DISPATCH_LUA = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"""

# Queue an abandoned call again and tell its front the new entry's id (so that the front
# can still delete it when it gives up), acking and deleting the old entry: one atomic
# step (the calls stream untrimmed, as above). ARGV[5] is the retry event, whose first
# "ENTRY" placeholder becomes the new id; a front stream gone or of another type must not
# stop the rest (pcall).
REQUEUE_LUA = """
local id = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
local event = string.gsub(ARGV[5], 'ENTRY', id, 1)
redis.pcall('XADD', KEYS[2], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[1], '*', ARGV[2], event)
redis.call('XACK', KEYS[1], ARGV[4], ARGV[6])
redis.call('XDEL', KEYS[1], ARGV[6])
return id
"""


@dataclass(frozen=True)
class Keys:
    """Every key of one cluster (one key prefix)."""

    prefix: str

    def calls(self, actor_id: str) -> str:
        return f"{self.prefix}:calls:{actor_id}"

    def events(self, front_id: str) -> str:
        return f"{self.prefix}:events:{front_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def generation(self, worker_id: str) -> str:
        """Which of its registrations ``worker`` holds: a count the worker raises on each
        change, so that a front fetches a registration (megabytes of schemas) once."""
        return f"{self.prefix}:worker:{worker_id}:generation"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"


def connect(settings: ClusterSettings, blocking: bool = False) -> RedisClient:
    """A client for ``settings.redis_url`` (auth and TLS come from the URL).

    A command is tried again once, on a fresh connection, when its connection fails: a
    pooled connection to a Redis that restarted fails once, and must not fail a call.
    Nothing more: a Redis that is really gone refuses the second try at once too, and a
    front must answer -32009 at once then. ``blocking`` clients wait longer per command,
    for reads that block up to BLOCK_MS.
    """
    timeout = COMMAND_TIMEOUT_S + (BLOCK_MS / 1000 if blocking else 0)
    # Bytes that are not UTF-8 (anyone who can write to the keys can write them) are read as
    # lone surrogates, not raised inside the client's reply: a loop would read the same entry
    # again forever. The parsers (messages.py) then refuse such text as malformed.
    options: dict[str, Any] = {
        "decode_responses": True, "encoding_errors": "surrogateescape",
        "socket_timeout": timeout, "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        "client_name": "actor-runtime"}
    if blocking:
        pool = ConnectionPool.from_url(settings.redis_url, max_connections=2**31, **options)
    else:
        pool = BlockingConnectionPool.from_url(settings.redis_url, **options,
                                               max_connections=POOL_CONNECTIONS,
                                               timeout=COMMAND_TIMEOUT_S)
    return Redis.from_pool(pool)


def encode(message: dict[str, Any]) -> dict[str, str]:
    """The fields of a stream entry holding ``message``."""
    return {FIELD: json.dumps(message, separators=(",", ":"), allow_nan=False)}


def error_message(exc: RpcError) -> dict[str, Any]:
    """An RpcError as sent between roles (its class name keeps metrics labels alike)."""
    return {"type": type(exc).__name__, "code": exc.CODE, "message": exc.message,
            "data": exc.data}


def remote_error(message: dict[str, Any]) -> RpcError:
    """The RpcError a worker reported, rebuilt with its own class (same CODE, same data)."""
    code, text, data = message.get("code"), str(message.get("message", "")), message.get("data")
    cls = _error_class(code, str(message.get("type", "")))
    error = cls.__new__(cls)
    RpcError.__init__(error, text, data)
    return error


def _error_class(code: Any, name: str) -> type[RpcError]:
    todo: list[type[RpcError]] = [RpcError]
    by_code = None
    while todo:
        cls = todo.pop()
        if code == cls.CODE and (by_code is None or cls.__name__ == name):
            by_code = cls
        todo.extend(cls.__subclasses__())
    return by_code or RpcError  # an unknown code: -32603 for the caller


def broker_unavailable() -> SandboxUnavailable:
    return SandboxUnavailable(BACKEND, BROKER_DOWN)


def stop_if_cancelled() -> None:
    """CancelledError if this task was asked to stop. redis-py may answer the cancellation
    of a command with an error of its own, or finish it: a loop that catches errors and
    goes on would then run for ever (a worker's heartbeat kept its shutdown waiting until
    it was killed). Every retrying loop calls this each round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Growing, jittered pauses between attempts to reach Redis; reset once it answers."""

    FIRST_S = 0.05

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self._next_s = self.FIRST_S
        self._random = random.Random()

    def reset(self) -> None:
        self._next_s = self.FIRST_S

    async def wait(self) -> None:
        stop_if_cancelled()
        # Full jitter: many workers reconnecting after an outage do not hit Redis in step.
        await asyncio.sleep(self._random.uniform(self._next_s / 2, self._next_s))
        self._next_s = min(self.max_s, self._next_s * 2)


async def ensure_group(client: RedisClient, stream: str) -> None:
    """Create the ``workers`` group of ``stream`` (and the stream) unless it exists.

    It starts at 0, so calls added before any worker (or after Redis restarted and lost
    the group) are still taken.
    """
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis_errors.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def supervised(name: str, coro: Coroutine[Any, Any, None],
               forever: bool = True) -> asyncio.Task[None]:
    """A task for a background loop (``forever``) or job, whose end by an exception is
    logged at once (not when the task is collected) and never silent."""
    def ended(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("cluster %s stopped by an error", name, exc_info=exc)
        elif forever:
            log.error("cluster loop %s ended", name)

    task = asyncio.create_task(coro)
    task.add_done_callback(ended)
    return task
