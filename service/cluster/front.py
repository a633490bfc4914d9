"""The front role: the protocol's methods on a cluster of workers (see ``streams``).

:class:`ClusterFront` offers what ``service.rpc.methods`` needs of a runtime (``actors``,
``get``, ``load``, ``process``), so the wire protocol is served by the same code as on one
machine. It validates params and payloads itself, sends each call to its actor's stream,
and follows the call's events on its own stream:

- each output ``seq`` is forwarded once, whatever the attempt that sent it;
- the first answer wins; anything later about that call is dropped;
- while Redis is unreachable every call fails at once with -32009 ``broker unavailable``
  (calls in flight too), and a loop reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from service.cluster.metrics import ClusterGauges, ClusterMetrics
from service.cluster.streams import (
    BACKEND,
    BLOCK_MS,
    BROKER_ERRORS,
    DISPATCH_LUA,
    FIELD,
    Backoff,
    Keys,
    broker_unavailable,
    connect,
    decode,
    encode,
    remote_error,
)
from service.cluster.worker import CONTROL_MAXLEN, new_id
from service.errors import ActorNotFound, Busy, InvalidParams, SandboxUnavailable
from service.manifest.model import Port
from service.manifest.schemas import dialect_of
from service.manifest.validation import SchemaValidator
from service.runtime import Emit, check_payload
from service.runtime import _objects as objects_of
from service.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CALL_MS = 100.0  # the Busy estimate before any call of the actor finished here
RECENT_CALLS = 20
LOAD_TIMEOUT_S = 30.0
READ_BATCH = 500
_LOST = {"kind": "lost"}  # put on every call's queue when Redis goes away


@dataclass(frozen=True)
class RemoteActor:
    """An actor as the live workers serving it describe it."""

    id: str
    inports: Mapping[str, Port]
    descriptor_json: dict[str, Any]
    workers: int = 0
    capacity: int = 0  # sandbox slots (max_workers) over every live worker
    limit: int = 0  # calls queued or running before -32008: (max_workers + max_queue) each

    def descriptor(self) -> dict[str, Any]:
        return self.descriptor_json

    @property
    def timeout_s(self) -> float:
        return float(self.descriptor_json.get("limits", {}).get("timeout_s", 10))


@dataclass
class _Pending:
    """A call this front waits for."""

    call_id: str
    actor_id: str
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    next_seq: int = 0
    attempt: int = 1
    dispatched: bool = False


@dataclass
class _LoadWait:
    expected: set[str]
    replies: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ClusterFront:
    """A front; ``start()`` then ``aclose()``."""

    def __init__(self, settings: Settings, metrics: ClusterMetrics | None = None) -> None:
        self.cfg = settings.cluster
        self._settings = settings
        self.metrics = metrics
        self.id = new_id("front")
        self.keys = Keys(self.cfg.key_prefix)
        self.events_key = self.keys.events(self.id)
        self.redis = connect(self.cfg)
        self.blocking = connect(self.cfg, blocking=True)
        self._dispatch = self.redis.register_script(DISPATCH_LUA)
        self.broker_up = False
        self.live_workers = 0
        self._connected_at = 0.0  # monotonic time of the last (re)connection to Redis
        self._actors: dict[str, RemoteActor] = {}
        self._ports: dict[str, MappingProxyType[str, Port]] = {}  # inports JSON -> compiled
        self._backlog: dict[str, int] = {}
        self._calls: dict[str, _Pending] = {}
        self._loads: dict[str, _LoadWait] = {}
        self._durations_ms: dict[str, deque[float]] = {}
        self._random = random.Random()
        self._last_read = "0-0"
        self._loops: set[asyncio.Task[None]] = set()

    def gauges(self) -> ClusterGauges:
        return ClusterGauges(self.broker_up, self.live_workers, dict(self._backlog))

    async def start(self) -> None:
        """Start reading events and the cluster's view; returns at once."""
        for loop in (self._read_loop(), self._view_loop()):
            self._loops.add(asyncio.create_task(loop))
        log.info("cluster front %s started", self.id)

    async def aclose(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            await self.redis.delete(self.events_key)
        except BROKER_ERRORS as exc:
            log.info("could not delete %s: %s", self.events_key, exc)
        await self.redis.aclose()
        await self.blocking.aclose()

    # --- what the methods use ---------------------------------------------------------

    def actors(self) -> list[RemoteActor]:
        self._require_broker()
        return sorted(self._actors.values(), key=lambda a: a.id)

    def get(self, actor_id: Any) -> RemoteActor:
        self._require_broker()
        actor = self._actors.get(actor_id) if isinstance(actor_id, str) else None
        if actor is None:
            raise ActorNotFound(actor_id)
        return actor

    def pool_stats(self) -> dict[str, tuple[int, int, int]]:
        return {}  # a front has no sandboxes

    @property
    def actor_count(self) -> int:
        return len(self._actors)

    async def process(self, actor_id: Any, payload: Any, config: Any = None, state: Any = None,
                      timestamp: Any = None, emit: Emit | None = None) -> dict[str, Any]:
        """Run one call on some worker; the protocol's `process` result."""
        started = time.perf_counter()
        actor = self.get(actor_id)
        payload, config, state = objects_of(payload=payload, config=config, state=state)
        await check_payload(actor, payload)
        call = _Pending(uuid.uuid4().hex, actor.id)
        self._calls[call.call_id] = call
        try:
            await self._send(actor, call, {
                "payload": payload, "config": config, "state": state, "quiet": emit is None,
                "timestamp": int(time.time() * 1000) if timestamp is None else timestamp})
            result = await asyncio.wait_for(self._follow(call, emit), self._deadline_s(actor))
        except TimeoutError:
            raise SandboxUnavailable(BACKEND, "no worker answered in time") from None
        except asyncio.CancelledError:
            if call.dispatched:  # cancel or a closed connection: stop the worker too
                await asyncio.shield(self._broadcast({"op": "cancel",
                                                      "call_id": call.call_id}))
            raise
        finally:
            del self._calls[call.call_id]
        duration_ms = (time.perf_counter() - started) * 1000
        self._durations_ms.setdefault(actor.id, deque(maxlen=RECENT_CALLS)).append(duration_ms)
        return {**result, "duration_ms": round(duration_ms, 3)}

    async def load(self, file_path: Any) -> tuple[RemoteActor, bool]:
        """Broadcast `load`: each live worker loads the path from its own checkout.

        It succeeds when at least one worker loaded it; when none did, the error of one
        of them (e.g. -32011 or -32007) is the answer.
        """
        if not isinstance(file_path, str) or not file_path:
            raise InvalidParams("file_path must be a non-empty string")
        self._require_broker()
        workers = await self._guard(self._live_registrations())
        if not workers:
            raise SandboxUnavailable(BACKEND, "no live workers")
        wait = _LoadWait(set(workers))
        token = uuid.uuid4().hex
        self._loads[token] = wait
        try:
            await self._broadcast({"op": "load", "file_path": file_path, "token": token},
                                  strict=True)
            await asyncio.wait_for(wait.done.wait(), LOAD_TIMEOUT_S)
        except TimeoutError:
            log.warning("load %s: no reply from %s", file_path,
                        sorted(wait.expected - {r.get("worker_id") for r in wait.replies}))
        finally:
            del self._loads[token]
        return await self._loaded(file_path, wait.replies)

    async def _loaded(self, file_path: str,
                      replies: list[dict[str, Any]]) -> tuple[RemoteActor, bool]:
        loaded = [r for r in replies if isinstance(r.get("actor"), dict)]
        for reply in replies:
            if "error" in reply:
                log.warning("load %s failed on worker %s: %s", file_path,
                            reply.get("worker_id"), reply["error"].get("message"))
        if not loaded:
            if not replies:
                raise SandboxUnavailable(BACKEND, "no worker answered the load")
            raise remote_error(replies[0]["error"])
        descriptor = loaded[0]["actor"]
        replaced = any(r.get("replaced") is True for r in loaded)
        await self._guard(self._refresh_view())
        actor = self._actors.get(descriptor["id"]) or self._remote_actor(descriptor)
        return actor, replaced

    # --- dispatch and follow one call -------------------------------------------------

    def _require_broker(self) -> None:
        if not self.broker_up:
            raise broker_unavailable()

    async def _guard(self, step: Any) -> Any:
        """Await ``step``; a Redis failure marks the broker down and answers -32009."""
        try:
            return await step
        except BROKER_ERRORS as exc:
            self._broker_lost(exc)
            raise broker_unavailable() from None

    async def _send(self, actor: RemoteActor, call: _Pending, params: dict[str, Any]) -> None:
        message = {"call_id": call.call_id, "front": self.id, "attempt": 1,
                   "actor_id": actor.id, **params}
        entry = encode(message)[FIELD]
        call.dispatched = True  # from here a cancel is broadcast: the add may have landed
        added = await self._guard(self._dispatch(
            keys=[self.keys.calls(actor.id)],
            args=[actor.limit, self.cfg.stream_maxlen, FIELD, entry]))
        if added is None:
            self._count("refused", actor.id)
            raise Busy(self._retry_after_ms(actor))
        self._count("dispatched", actor.id)

    async def _follow(self, call: _Pending, emit: Emit | None) -> dict[str, Any]:
        """Forward the call's outputs and logs until its answer arrives."""
        while True:
            event = await call.events.get()
            kind = event.get("kind")
            if kind == "result":
                result: dict[str, Any] = event["result"]
                return result
            if kind == "error":
                raise remote_error(event["error"])
            if kind == "lost":
                raise broker_unavailable()
            if kind == "retry":
                call.attempt = max(call.attempt, int(event.get("attempt", 1)))
                self._count("retried", call.actor_id)
            elif kind in ("output", "log") and emit is not None:
                await self._forward(call, event, emit)

    @staticmethod
    async def _forward(call: _Pending, event: dict[str, Any], emit: Emit) -> None:
        params = event.get("params")
        if not isinstance(params, dict):
            return
        if event["kind"] == "output":
            seq = params.get("seq")
            if not isinstance(seq, int) or seq < call.next_seq:
                return  # sent already, by an earlier attempt
            call.next_seq = seq + 1
        elif int(event.get("attempt", 1)) < call.attempt:
            return  # the log of an attempt given up on
        await emit(str(event["kind"]), params)

    def _deadline_s(self, actor: RemoteActor) -> float:
        """How long a front waits for an answer: every attempt may use its time limit and
        be noticed dead, after waiting in the queue."""
        per_attempt = actor.timeout_s + self.cfg.worker_timeout_s + self.cfg.heartbeat_s
        return self.cfg.max_attempts * per_attempt + self.cfg.queue_timeout_s

    def _retry_after_ms(self, actor: RemoteActor) -> int:
        """When a slot may free up: recent call time times the rounds queued, with jitter so
        that refused callers do not all come back at the same moment."""
        recent = self._durations_ms.get(actor.id) or ()
        average = sum(recent) / len(recent) if recent else DEFAULT_CALL_MS
        rounds = 1 + self._backlog.get(actor.id, 0) // max(1, actor.capacity)
        return max(1, int(average * rounds * self._random.uniform(1.0, 1.5)))

    async def _broadcast(self, message: dict[str, Any], strict: bool = False) -> None:
        try:
            await self.redis.xadd(self.keys.control, encode({**message, "front": self.id}),
                                  maxlen=CONTROL_MAXLEN, approximate=True)
        except BROKER_ERRORS as exc:
            self._broker_lost(exc)
            if strict:
                raise broker_unavailable() from None

    # --- events -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            try:
                if not self.broker_up:
                    await self._connect()
                    backoff.reset()
                reply = await self.blocking.xread({self.events_key: self._last_read},
                                                  count=READ_BATCH, block=BLOCK_MS)
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    self._route(decode(fields) or {})

    async def _connect(self) -> None:
        """(Re)create this front's stream and read the cluster's view, then serve."""
        await self._touch_events()
        self._connected_at = time.monotonic()
        await self._refresh_view()
        self.broker_up = True
        log.info("cluster front %s connected to Redis (%d live workers)", self.id,
                 self.live_workers)

    async def _touch_events(self) -> None:
        """Keep this front's stream alive (and expiring after the front is gone)."""
        ttl_ms = int(self.cfg.worker_timeout_s * 4000)
        if not await self.redis.pexpire(self.events_key, ttl_ms):  # gone: Redis restarted
            self._last_read = await self.redis.xadd(self.events_key, {"hello": self.id})
            await self.redis.pexpire(self.events_key, ttl_ms)

    def _in_reconnect_grace(self) -> bool:
        return time.monotonic() - self._connected_at < self.cfg.worker_timeout_s

    def _broker_lost(self, exc: BaseException) -> None:
        if self.broker_up:
            log.warning("cluster front %s lost Redis: %s; failing %d calls in flight",
                        self.id, exc, len(self._calls))
        self.broker_up = False
        for call in self._calls.values():
            call.events.put_nowait(_LOST)
        for wait in self._loads.values():
            wait.done.set()

    def _route(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "load":
            wait = self._loads.get(str(event.get("token")))
            if wait is not None:
                wait.replies.append(event)
                if wait.expected <= {r.get("worker_id") for r in wait.replies}:
                    wait.done.set()
            return
        call = self._calls.get(str(event.get("call_id")))
        if call is not None:  # else: a late event of a finished call
            call.events.put_nowait(event)

    # --- the view of the cluster ------------------------------------------------------

    async def _view_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            if not self.broker_up:
                continue
            try:
                await self._refresh_view()
                await self._touch_events()
                await self.redis.xtrim(self.events_key, minid=self._last_read, approximate=True)
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)

    async def _live_registrations(self) -> dict[str, dict[str, Any]]:
        """worker id -> registration, for every worker whose heartbeat is current."""
        ids: list[str] = await self.redis.zrange(self.keys.workers, 0, -1)
        values = await self.redis.mget([self.keys.worker(i) for i in ids]) if ids else []
        dead = [i for i, v in zip(ids, values, strict=True) if v is None]
        if dead:
            await self.redis.zrem(self.keys.workers, *dead)
        live = {}
        for worker_id, value in zip(ids, values, strict=True):
            try:
                live[worker_id] = json.loads(value) if value is not None else None
            except ValueError:
                continue
        return {k: v for k, v in live.items() if isinstance(v, dict)}

    async def _refresh_view(self) -> None:
        workers = await self._live_registrations()
        if not workers and self._actors and self._in_reconnect_grace():
            # A Redis that restarted empty has lost the workers' registrations until their
            # next heartbeat: keep serving the actors we knew (calls wait in their streams,
            # whose groups read from the start) rather than answering "Actor not found".
            return
        actors: dict[str, RemoteActor] = {}
        for worker_id in sorted(workers):
            served = workers[worker_id].get("actors")
            for actor_id, entry in (served or {}).items():
                actors[actor_id] = self._serving(actors.get(actor_id), entry)
        pipe = self.redis.pipeline(transaction=False)
        for actor_id in actors:
            pipe.xlen(self.keys.calls(actor_id))
        lengths = await pipe.execute() if actors else []
        self._actors = actors
        self._backlog = dict(zip(actors, lengths, strict=True))
        self.live_workers = len(workers)

    def _serving(self, actor: RemoteActor | None, entry: dict[str, Any]) -> RemoteActor:
        """``actor`` with one more live worker serving it (as ``entry`` describes)."""
        if actor is None:
            actor = self._remote_actor(entry["descriptor"])
        max_workers, max_queue = int(entry["max_workers"]), int(entry["max_queue"])
        return RemoteActor(actor.id, actor.inports, actor.descriptor_json, actor.workers + 1,
                           actor.capacity + max_workers, actor.limit + max_workers + max_queue)

    def _remote_actor(self, descriptor: dict[str, Any]) -> RemoteActor:
        inports = descriptor.get("inports", {})
        key = json.dumps(inports, sort_keys=True)
        if key not in self._ports:  # compiled once per distinct definition
            self._ports[key] = MappingProxyType({
                name: _port(name, spec, self._settings) for name, spec in inports.items()})
        return RemoteActor(str(descriptor["id"]), self._ports[key], descriptor)

    def _count(self, what: str, actor_id: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, what)(actor_id)


def _port(name: str, spec: dict[str, Any], settings: Settings) -> Port:
    """A worker's published inport (a self-contained schema), compiled as the worker did."""
    schema = spec.get("schema", {})
    dialect = dialect_of(schema)
    if dialect is None:
        raise ValueError(f"inport {name}: unknown $schema")
    validator = SchemaValidator(schema, dialect, settings.schema_format_assertion,
                                settings.validation_timeout_s)
    return Port(name, schema, validator, spec.get("description", ""),
                bool(spec.get("required", True)))
