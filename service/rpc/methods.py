"""The protocol's methods (list, describe, load, process, cancel, rpc.discover) on a Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.errors import Cancelled, PathNotAllowed, RpcError, SandboxUnavailable
from service.jsonfast import weight
from service.log import FIELDS_ATTR, RateLimit, fields, log_fast
from service.metrics import Metrics
from service.rpc.core import (
    PIECE_VALUES,
    Call,
    Dispatcher,
    Encoded,
    Handler,
    encode,
    encode_in_pieces,
    off_loop,
)
from service.rpc.openrpc import load_openrpc, params_schema, result_schema

if TYPE_CHECKING:
    from service.runtime import Emit, Runtime

log = logging.getLogger(__name__)

UNKNOWN_ACTOR = "_unknown"  # metrics label for ids no actor has: keeps label cardinality bounded
SHUTTING_DOWN = "shutting down"
# Outcomes a flood of callers causes at will: logged at most once per interval per actor.
RATE_LIMITED_OUTCOMES = frozenset({"busy", "shutting_down"})
# An output value is written once for its notification and its response (rather than three
# times: splicing costs a few µs) from this many values (jsonfast.weight): past PIECE_VALUES,
# in a thread and in pieces.
MANY_VALUES = 64
LARGE_DESCRIPTOR = 64 << 10  # characters: a descriptor this long is kept written
REFUSAL_LOG_INTERVAL_S = 10.0  # -32009 data.reason while the server drains


@dataclass
class _Running:
    task: asyncio.Task[Any]  # the task serving the request (a frame's, or a batch element's)
    key: str  # the request id as JSON text, encoded once per call
    cancels: int = 0  # cancel requests that reached the task (each one counts in cancelling())


@dataclass
class InFlight:
    """One connection's process calls in flight, by id (JSON text of the id, so type counts)."""

    calls: dict[str, list[_Running]] = field(default_factory=dict)

    def add(self, request_id: Any, task: asyncio.Task[Any]) -> _Running:
        running = _Running(task, id_text(request_id))
        self.calls.setdefault(running.key, []).append(running)
        return running

    def remove(self, running: _Running) -> None:
        entries = self.calls.get(running.key, [])
        if running in entries:
            entries.remove(running)
        if not entries:
            self.calls.pop(running.key, None)

    def cancel(self, request_id: Any) -> bool:
        """Cancel every running call with this id; True when at least one was running."""
        cancelled = False
        for running in self.calls.get(id_text(request_id), []):
            if running.task.cancel():
                running.cancels += 1
                cancelled = True
        return cancelled


class Methods:
    """The handlers, bound to one runtime and one metrics registry."""

    def __init__(self, runtime: Runtime, metrics: Metrics | None, openrpc: dict[str, Any]) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.openrpc = openrpc
        # Set by the server on SIGTERM: new process calls are refused (-32009) while the
        # running ones finish; once `stopping`, the calls cancelled at the end of the grace
        # are answered -32009 too, instead of vanishing with the connection.
        self.draining = False
        self.stopping = False
        self._refusals = RateLimit(REFUSAL_LOG_INTERVAL_S)
        # those `list` found last, and any described or loaded since
        self._descriptors = WrittenDescriptors()

    def handlers(self) -> dict[str, Handler]:
        return {
            "list": self.list,
            "describe": self.describe,
            "load": self.load,
            "process": self.process,
            "cancel": self.cancel,
            "rpc.discover": self.discover,
        }

    async def list(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        actors = self.runtime.actors()
        written = await self._descriptors.of(actors, keep_only=True)
        return {"actors": [_as_sent(descriptor) for descriptor in written]}

    async def describe(self, params: dict[str, Any], call: Call) -> Any:
        actor = self.runtime.get(params["actor_id"])
        return _as_sent((await self._descriptors.of([actor]))[0])

    async def load(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        if not call.connection.admin:
            log.warning("load refused: the connection has no admin token")
            raise PathNotAllowed(params["file_path"], "load is an admin operation: connect "
                                 "with a token from auth.admin_tokens")
        actor, replaced = await self.runtime.load(params["file_path"])
        return {"success": True, "actor": _as_sent((await self._descriptors.of([actor]))[0]),
                "replaced": replaced}

    async def cancel(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        cancelled = call.connection.slot(InFlight).cancel(params["request_id"])
        return {"cancelled": cancelled}

    async def discover(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return self.openrpc

    async def process(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run the actor; its outputs and logs go out as notifications before this returns.

        The run is awaited in the task serving the request (no task of its own): `cancel`
        cancels that task, and the CancelledError arrives here only once the runtime has
        handled it (the sandbox is killed) all the way up."""
        started = time.perf_counter()
        outcome = "ok"
        if self.draining:
            self._record(params["actor_id"], id_text(call.id), "shutting_down", 0)
            raise self._shutting_down()
        # A notification has no id to cancel it by; closing the connection still cancels it.
        running = in_flight = None
        if not call.is_notification:
            task = asyncio.current_task()
            assert task is not None  # handlers run in the task serving their request
            in_flight = call.connection.slot(InFlight)
            running = in_flight.add(call.id, task)
        # a large output written once, kept as its text (where the result holds what the
        # emitter gives back)
        keep = getattr(self.runtime, "results_hold_emitted_values", False)
        try:
            return await self.runtime.process(
                params["actor_id"], params["payload"], params.get("config"),
                params.get("state"), params.get("timestamp"),
                emit=None if call.is_notification else _emitter(call, keep))
        except asyncio.CancelledError:
            if running is not None and _withdraw_cancels(running):
                outcome = "cancelled"  # only `cancel` asked: the connection is still there
                raise Cancelled() from None
            if self.stopping:  # the grace is over: say so to the caller before the close
                outcome = "shutting_down"
                raise self._shutting_down() from None
            outcome = "disconnected"
            raise
        except RpcError as exc:
            outcome = _snake(type(exc).__name__)
            raise
        except Exception:
            outcome = "internal_error"
            raise
        finally:
            if running is not None and in_flight is not None:
                in_flight.remove(running)
                _withdraw_cancels(running)  # a cancel the run swallowed must not linger
            # Logged and counted once the response is on its way (the loop's next turn): not
            # on the caller's clock.
            asyncio.get_running_loop().call_soon(
                self._record, params["actor_id"], "-" if running is None else running.key,
                outcome, time.perf_counter() - started)

    def _shutting_down(self) -> SandboxUnavailable:
        # A cluster front stands in for the runtime there, and has no backend of its own.
        backend = getattr(getattr(self.runtime, "backend", None), "name", "cluster")
        return SandboxUnavailable(backend, SHUTTING_DOWN)

    def _record(self, actor_id: str, id_text: str, outcome: str, duration_s: float) -> None:
        label = self._actor_label(actor_id)
        if self.metrics is not None:
            self.metrics.observe_call(label, outcome, duration_s)
        held = self._refusals.allow(label) if outcome in RATE_LIMITED_OUTCOMES else 0
        if held is None or not log.isEnabledFor(logging.INFO):
            return  # counted in the metrics; the next line says how many were held back
        duration_ms = round(duration_s * 1000, 1)
        extra = fields(actor=actor_id, id=id_text, outcome=outcome, duration_ms=duration_ms)
        if held:
            extra[FIELDS_ATTR]["held_back"] = held
        log_fast(log, logging.INFO, "process actor=%s id=%s outcome=%s duration_ms=%.1f%s",
                 (actor_id, id_text, outcome, duration_ms,
                  f" ({held} more like it not logged)" if held else ""), extra)

    def _actor_label(self, actor_id: str) -> str:
        try:
            return self.runtime.get(actor_id).id
        except RpcError:  # not found (or, on a cluster front, Redis unreachable)
            return UNKNOWN_ACTOR


class WrittenDescriptors:
    """Actors' descriptors, each written once, in a thread and in pieces (encode_in_pieces),
    and kept by actor id (a replaced actor's goes with it). Ports with schemas of megabytes
    took ~1 s of the event loop to write out, on every `list`."""

    def __init__(self) -> None:
        self._written: dict[str, tuple[Any, Encoded]] = {}  # id -> (_source(actor), written)

    async def of(self, actors: Sequence[Any], keep_only: bool = False) -> list[Encoded]:
        """The descriptors of ``actors`` (objects with ``id`` and ``descriptor()``), written;
        ``keep_only``: forget any other actor's."""
        known = {actor.id: self._written.get(actor.id) for actor in actors}
        new = [actor for actor in actors
               if (known[actor.id] or (None,))[0] is not _source(actor)]
        if new:
            written = await off_loop(
                lambda: [Encoded(d, encode_in_pieces(d)) for d in (a.descriptor() for a in new)])
            for actor, descriptor in zip(new, written, strict=True):
                known[actor.id] = self._written[actor.id] = (_source(actor), descriptor)
        if keep_only:
            self._written = {actor.id: entry for actor in actors
                             if (entry := known[actor.id]) is not None}
        return [entry[1] for actor in actors if (entry := known[actor.id]) is not None]


def _source(actor: Any) -> Any:
    """What an actor's descriptor is made of: the actor, or on a cluster front, which makes
    its actors anew every heartbeat, the descriptor its workers registered."""
    return getattr(actor, "descriptor_json", actor)


def _as_sent(descriptor: Encoded) -> Any:
    """Its text where long (spliced into the answer), else the value (written with it)."""
    return descriptor if len(descriptor.text) >= LARGE_DESCRIPTOR else descriptor.value


def _withdraw_cancels(running: _Running) -> bool:
    """Take back the cancellations `cancel` requested of the call's task; True when it had
    some and nothing else (a closing connection, the shutdown) cancels the task too."""
    if not running.cancels:
        return False
    for _ in range(running.cancels):
        running.task.uncancel()
    running.cancels = 0
    return running.task.cancelling() == 0


def id_text(request_id: Any) -> str:
    """A request id as JSON text (how the call log and `cancel` tell ids apart: 1, 1.0, "1")."""
    return str(request_id) if type(request_id) is int else encode(request_id)


def _emitter(call: Call, keep: bool) -> Emit:
    """Sends the call's notifications. With ``keep``, a large output's value is written
    once, here, and what the call keeps for its response (which holds it twice more) is
    that text alone: the value is freed (Encoded.drop_value)."""
    async def emit(kind: str, params: dict[str, Any]) -> Encoded | None:
        data = params.get("data")
        written = None
        if keep and kind == "output" and type(data) in (str, list, dict) \
                and (heavy := weight(data, PIECE_VALUES)) >= MANY_VALUES:
            # one JSON cannot hold: the notification says why, as for a small one
            with contextlib.suppress(RecursionError, ValueError, TypeError):
                written = await Encoded.off_loop(data) if heavy >= PIECE_VALUES \
                    else Encoded(data)
                params = {**params, "data": written}
        await call.notify(kind, {"request_id": call.id, **params})
        if written is not None:
            written.drop_value()
        return written

    return emit


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def register_methods(
    dispatcher: Dispatcher,
    runtime: Runtime,
    metrics: Metrics | None = None,
    openrpc: dict[str, Any] | None = None,
) -> Methods:
    """Register every method of the protocol, with its params/result schemas from OpenRPC."""
    doc = load_openrpc() if openrpc is None else openrpc
    methods = Methods(runtime, metrics, doc)
    for name, handler in methods.handlers().items():
        dispatcher.register(name, handler, params_schema(doc, name), result_schema(doc, name))
    return methods
