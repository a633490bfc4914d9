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
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from service.cluster.messages import Malformed, Offer, parse_event, parse_registration
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
    encode,
    error_message,
    remote_error,
    stop_if_cancelled,
    supervised,
)
from service.cluster.worker import CONTROL_MAXLEN, new_id
from service.errors import (
    ActorNotFound,
    Busy,
    InternalError,
    SandboxUnavailable,
)
from service.log import RateLimit
from service.manifest.model import Port
from service.manifest.schemas import dialect_of
from service.manifest.validation import SchemaValidator
from service.rpc.core import encode_in_pieces, off_loop
from service.runtime import Emit, check_file_path, check_payload
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
    entry_id: str | None = None  # its entry in calls:<actor> (the latest, after a retry)
    last_events: dict[int, int] = field(default_factory=dict)  # attempt: n last forwarded


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
        self._losses = RateLimit()  # per actor: a lost output is logged, not every one
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._skipped: dict[str, str] = {}  # worker id -> why its registration is not used
        # worker id -> its registration's text, and what _usable made of it
        self._registrations: dict[str, tuple[str, dict[str, tuple[RemoteActor, Offer]]]] = {}
        self._fetched: dict[str, tuple[str, str]] = {}  # worker id -> (generation, its text)
        self._refreshing = asyncio.Lock()

    def gauges(self) -> ClusterGauges:
        return ClusterGauges(self.broker_up, self.live_workers, dict(self._backlog))

    def stopped_loops(self) -> list[str]:
        """The background loops that ended (none should, before ``aclose``)."""
        return sorted(name for name, task in self._loops.items() if task.done())

    async def start(self) -> None:
        """Start reading events and the cluster's view; returns at once."""
        for name, loop in (("events", self._read_loop()), ("view", self._view_loop())):
            self._loops[name] = supervised(name, loop)
        log.info("cluster front %s started", self.id)

    async def aclose(self) -> None:
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
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
            wait_s = self._deadline_s(actor)
            await self._send(actor, call, {
                "payload": payload, "config": config, "state": state, "quiet": emit is None,
                "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
                "wait_ms": int(wait_s * 1000)})  # no worker starts it after that
            result = await asyncio.wait_for(self._follow(call, emit), wait_s)
        except TimeoutError:
            await self._give_up(call)
            raise SandboxUnavailable(BACKEND, "no worker answered in time") from None
        except OutputsLost as exc:
            # Redis trouble, or an event written into the stream by someone else: either
            # way the operator must hear of it, not only the caller.
            if (held := self._losses.allow(actor.id)) is not None:
                more = f" ({held} more since the last line)" if held else ""
                log.warning("call %s of %s failed: %s%s", call.call_id, actor.id,
                            exc.data["reason"], more)
            await self._give_up(call)
            raise
        except asyncio.CancelledError:
            if call.dispatched:  # cancel or a closed connection: stop the worker too
                await asyncio.shield(self._give_up(call))
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
        file_path = check_file_path(file_path)
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
            await self._replies(wait)
        except TimeoutError:
            log.warning("load %s: no reply from %s", file_path,
                        sorted(wait.expected - {r.get("worker_id") for r in wait.replies}))
        finally:
            del self._loads[token]
        return await self._loaded(file_path, wait.replies)

    async def _replies(self, wait: _LoadWait) -> None:
        """Until every expected worker replied (TimeoutError after LOAD_TIMEOUT_S). A worker
        whose registration expired meanwhile (it died) is no longer waited for: checked at
        every heartbeat_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOAD_TIMEOUT_S
        while not wait.done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.cfg.heartbeat_s, deadline - loop.time())):
                    await wait.done.wait()
            if wait.done.is_set():
                return
            if loop.time() >= deadline:
                raise TimeoutError
            wait.expected &= set(await self._guard(self._live_registrations()))
            if wait.expected <= {r.get("worker_id") for r in wait.replies}:
                wait.done.set()

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

    async def _give_up(self, call: _Pending) -> None:
        """No worker may start the call from now on: delete its entry (a worker that took
        it already keeps it in its own memory only) and broadcast ``cancel`` (the worker
        running it, or about to, drops it)."""
        if call.entry_id is not None:
            try:
                await self.redis.xdel(self.keys.calls(call.actor_id), call.entry_id)
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
        await self._broadcast({"op": "cancel", "call_id": call.call_id})

    async def _send(self, actor: RemoteActor, call: _Pending, params: dict[str, Any]) -> None:
        message = {"call_id": call.call_id, "front": self.id, "attempt": 1,
                   "actor_id": actor.id, **params}
        entry = encode(message)[FIELD]
        call.dispatched = True  # from here a cancel is broadcast: the add may have landed
        added = await self._guard(self._dispatch(
            keys=[self.keys.calls(actor.id)],
            args=[actor.limit, FIELD, entry]))
        if added is None:
            self._count("refused", actor.id)
            raise Busy(self._retry_after_ms(actor))
        call.entry_id = str(added)
        self._count("dispatched", actor.id)

    async def _follow(self, call: _Pending, emit: Emit | None) -> dict[str, Any]:
        """Forward the call's outputs and logs until its answer arrives."""
        while True:
            event = await call.events.get()
            kind = event.get("kind")
            if kind == "result":
                result: dict[str, Any] = event["result"]
                if emit is not None and len(result["emitted"]) > call.next_seq:
                    raise OutputsLost(f"outputs were lost: the call emitted "
                                      f"{len(result['emitted'])}, {call.next_seq} arrived")
                return result
            if kind == "error":
                raise remote_error(event["error"])
            if kind == "lost":
                raise broker_unavailable()
            if kind == "retry":
                call.attempt = max(call.attempt, event["attempt"])
                if isinstance(event.get("entry"), str):
                    call.entry_id = event["entry"]
                self._count("retried", call.actor_id)
            elif kind in ("output", "log") and emit is not None:
                await self._forward(call, event, emit)

    @staticmethod
    async def _forward(call: _Pending, event: dict[str, Any], emit: Emit) -> None:
        params = event["params"]
        attempt, number = event["attempt"], event.get("n", 0)
        if number:  # each run numbers its events, in the order it sends them
            if number <= call.last_events.get(attempt, 0):
                return  # sent twice by its worker: the reply to the first try was lost
            call.last_events[attempt] = number
        if event["kind"] == "output":
            seq = params["seq"]
            if seq < call.next_seq:
                return  # sent already, by an earlier attempt
            if seq > call.next_seq:
                # Each run sends its outputs in order and never drops one, so a gap means
                # some were lost on the way: the caller must not get a success without them.
                raise OutputsLost(f"outputs were lost: seq {seq} came after "
                                  f"{call.next_seq - 1}")
            call.next_seq = seq + 1
        elif event["attempt"] < call.attempt:
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
            stop_if_cancelled()
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
            except Exception:  # one bad round must not stop the reading for good
                log.exception("cluster front %s: reading events failed; going on", self.id)
                await backoff.wait()
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    self._route(entry_id, fields)

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

    def _route(self, entry_id: str, fields: Any) -> None:
        try:
            event = parse_event(fields)
        except Malformed as exc:
            self._malformed_event(entry_id, fields, exc)
            return
        if event["kind"] == "load":
            wait = self._loads.get(event["token"])
            if wait is not None:
                wait.replies.append(event)
                if wait.expected <= {r.get("worker_id") for r in wait.replies}:
                    wait.done.set()
            return
        call = self._calls.get(event["call_id"])
        if call is not None:  # else: a late event of a finished call
            call.events.put_nowait(event)

    def _malformed_event(self, entry_id: str, fields: Any, exc: Malformed) -> None:
        """Drop an event this front cannot use; the call it names (if any) fails."""
        if "hello" in (fields or {}):
            return  # the marker this front adds when it creates its stream
        log.warning("dropping malformed entry %s of %s: %s", entry_id, self.events_key,
                    exc.reason)
        if self.metrics is not None:
            self.metrics.malformed("event")
        call = self._calls.get(exc.reply_to[1]) if exc.reply_to is not None else None
        if call is not None:
            error = InternalError(f"Internal error: an event of the call is malformed "
                                  f"({exc.reason})")
            call.events.put_nowait({"kind": "error", "error": error_message(error)})

    # --- the view of the cluster ------------------------------------------------------

    async def _view_loop(self) -> None:
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self.cfg.heartbeat_s)
            if not self.broker_up:
                continue
            try:
                await self._touch_events()
                await self.redis.xtrim(self.events_key, minid=self._last_read, approximate=True)
                await self._refresh_view()
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
            except Exception:  # one bad round must not freeze the view for good
                log.exception("cluster front %s: refreshing the view failed; going on",
                              self.id)

    async def _live_registrations(self) -> dict[str, str]:
        """worker id -> registration (JSON), for every worker whose heartbeat is current.
        A registration is fetched again only when its generation changed (a worker that
        keeps none, from before generations, is fetched every time)."""
        ids: list[str] = await self.redis.zrange(self.keys.workers, 0, -1)
        if not ids:
            self._fetched = {}
            return {}
        generations = await self.redis.mget([self.keys.generation(i) for i in ids])
        texts: dict[str, str] = {}
        fetch: dict[str, str | None] = {}
        for worker_id, generation in zip(ids, generations, strict=True):
            held = self._fetched.get(worker_id)
            if generation is not None and held is not None and held[0] == generation:
                texts[worker_id] = held[1]
            else:
                fetch[worker_id] = generation
        values = await self.redis.mget([self.keys.worker(i) for i in fetch]) if fetch else []
        for (worker_id, generation), value in zip(fetch.items(), values, strict=True):
            if isinstance(value, str):
                texts[worker_id] = value
                if generation is not None:
                    self._fetched[worker_id] = (generation, value)
        if dead := [i for i in fetch if i not in texts]:
            await self.redis.zrem(self.keys.workers, *dead)
        self._fetched = {k: v for k, v in self._fetched.items() if k in texts}
        return texts

    async def _refresh_view(self) -> None:
        """One at a time: one that read older registrations, and compiled them for longer,
        must not end after a newer one (a `load`'s) and put its older view back."""
        async with self._refreshing:
            await self._refresh_view_now()

    async def _refresh_view_now(self) -> None:
        workers = await self._live_registrations()
        if not workers and self._actors and self._in_reconnect_grace():
            # A Redis that restarted empty has lost the workers' registrations until their
            # next heartbeat: keep serving the actors we knew (calls wait in their streams,
            # whose groups read from the start) rather than answering "Actor not found".
            return
        actors: dict[str, RemoteActor] = {}
        used = 0
        for worker_id in sorted(workers):
            served = await self._served(worker_id, workers[worker_id])
            if served is None:
                continue
            used += 1
            for actor_id, (remote, offer) in served.items():
                actors[actor_id] = _serving(actors.get(actor_id) or remote, offer)
        self._skipped = {k: v for k, v in self._skipped.items() if k in workers}
        self._registrations = {k: v for k, v in self._registrations.items() if k in workers}
        pipe = self.redis.pipeline(transaction=False)
        for actor_id in actors:
            pipe.xlen(self.keys.calls(actor_id))
        lengths = await pipe.execute() if actors else []
        self._actors = actors
        self._backlog = dict(zip(actors, lengths, strict=True))
        self.live_workers = used

    async def _served(self, worker_id: str,
                      value: str) -> dict[str, tuple[RemoteActor, Offer]] | None:
        """_usable's answer for a worker's registration, worked out in a thread once per text
        (a worker sends the same one every heartbeat): with megabytes of schemas, parsing
        and compiling it on the event loop held it for seconds, every heartbeat."""
        known = self._registrations.get(worker_id)
        if known is not None and known[0] == value:
            return known[1]
        served = await off_loop(self._usable, worker_id, value)
        if served is not None:  # one that failed is tried again: it may not fail again
            self._registrations[worker_id] = (value, served)
        return served

    def _usable(self, worker_id: str,
                value: str) -> dict[str, tuple[RemoteActor, Offer]] | None:
        """A registration's actors, compiled; None (and a warning, once) when it cannot be
        used: the other workers are still served."""
        try:
            registration = parse_registration(worker_id, value)
            return {actor_id: (self._remote_actor(offer.descriptor), offer)
                    for actor_id, offer in registration.actors.items()}
        except Exception as exc:  # Malformed, or a schema this front cannot compile
            reason = str(exc) or type(exc).__name__
            if self._skipped.get(worker_id) != reason:
                self._skipped[worker_id] = reason
                log.warning("ignoring the registration of worker %s: %s", worker_id, reason)
                if self.metrics is not None:
                    self.metrics.malformed("registration")
            return None

    def _remote_actor(self, descriptor: dict[str, Any]) -> RemoteActor:
        inports = descriptor.get("inports", {})
        key = encode_in_pieces(inports)  # in pieces: see _served
        if key not in self._ports:  # compiled once per distinct definition
            self._ports[key] = MappingProxyType({
                name: _port(name, spec, self._settings) for name, spec in inports.items()})
        return RemoteActor(str(descriptor["id"]), self._ports[key], descriptor)

    def _count(self, what: str, actor_id: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, what)(actor_id)


class OutputsLost(SandboxUnavailable):
    """Outputs of a call did not all reach this front: the call fails (-32009)."""

    def __init__(self, reason: str) -> None:
        super().__init__(BACKEND, reason)


def _serving(actor: RemoteActor, offer: Offer) -> RemoteActor:
    """``actor`` with one more live worker serving it (as ``offer`` describes)."""
    return RemoteActor(actor.id, actor.inports, actor.descriptor_json, actor.workers + 1,
                       actor.capacity + offer.max_workers,
                       actor.limit + offer.max_workers + offer.max_queue)


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
