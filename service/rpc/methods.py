"""The protocol's methods (list, describe, load, process, cancel, rpc.discover) on a Runtime."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.errors import Cancelled, PathNotAllowed, RpcError, SandboxUnavailable
from service.log import FIELDS_ATTR, RateLimit, fields
from service.metrics import Metrics
from service.rpc.core import Call, Dispatcher, Handler, encode
from service.rpc.openrpc import load_openrpc, params_schema, result_schema

if TYPE_CHECKING:
    from service.runtime import Emit, Runtime

log = logging.getLogger(__name__)

UNKNOWN_ACTOR = "_unknown"  # metrics label for ids no actor has: keeps label cardinality bounded
SHUTTING_DOWN = "shutting down"
# Outcomes a flood of callers causes at will: logged at most once per interval per actor.
RATE_LIMITED_OUTCOMES = frozenset({"busy", "shutting_down"})
REFUSAL_LOG_INTERVAL_S = 10.0  # -32009 data.reason while the server drains


@dataclass
class _Running:
    task: asyncio.Future[dict[str, Any]]
    key: str  # the request id as JSON text, encoded once per call
    cancel_requested: bool = False


@dataclass
class InFlight:
    """One connection's process calls in flight, by id (JSON text of the id, so type counts)."""

    calls: dict[str, list[_Running]] = field(default_factory=dict)

    def add(self, request_id: Any, task: asyncio.Future[dict[str, Any]]) -> _Running:
        running = _Running(task, encode(request_id))
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
        for running in self.calls.get(encode(request_id), []):
            if running.task.cancel():
                running.cancel_requested = True
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
        return {"actors": [actor.descriptor() for actor in self.runtime.actors()]}

    async def describe(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return self.runtime.get(params["actor_id"]).descriptor()

    async def load(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        if not call.connection.admin:
            log.warning("load refused: the connection has no admin token")
            raise PathNotAllowed(params["file_path"], "load is an admin operation: connect "
                                 "with a token from auth.admin_tokens")
        actor, replaced = await self.runtime.load(params["file_path"])
        return {"success": True, "actor": actor.descriptor(), "replaced": replaced}

    async def cancel(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        cancelled = call.connection.slot(InFlight).cancel(params["request_id"])
        return {"cancelled": cancelled}

    async def discover(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return self.openrpc

    async def process(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        """Run the actor; its outputs and logs go out as notifications before this returns."""
        started = time.perf_counter()
        outcome = "ok"
        if self.draining:
            self._record(params["actor_id"], encode(call.id), "shutting_down", 0)
            raise self._shutting_down()
        task = asyncio.ensure_future(self.runtime.process(
            params["actor_id"], params["payload"], params.get("config"), params.get("state"),
            params.get("timestamp"), emit=None if call.is_notification else _emitter(call)))
        # A notification has no id to cancel it by; closing the connection still cancels it.
        in_flight = call.connection.slot(InFlight)
        running = None if call.is_notification else in_flight.add(call.id, task)
        try:
            return await task
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})  # the sandbox is killed before we answer or go away
            current = asyncio.current_task()
            if running is not None and running.cancel_requested and not (
                    current is not None and current.cancelling()):
                outcome = "cancelled"
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
            if running is not None:
                in_flight.remove(running)
            self._record(params["actor_id"], "-" if running is None else running.key, outcome,
                         time.perf_counter() - started)

    def _shutting_down(self) -> SandboxUnavailable:
        # A cluster front stands in for the runtime there, and has no backend of its own.
        backend = getattr(getattr(self.runtime, "backend", None), "name", "cluster")
        return SandboxUnavailable(backend, SHUTTING_DOWN)

    def _record(self, actor_id: str, id_text: str, outcome: str, duration_s: float) -> None:
        label = self._actor_label(actor_id)
        if self.metrics is not None:
            self.metrics.observe_call(label, outcome, duration_s)
        held = self._refusals.allow(label) if outcome in RATE_LIMITED_OUTCOMES else 0
        if held is None:
            return  # counted in the metrics; the next line says how many were held back
        duration_ms = round(duration_s * 1000, 1)
        extra = fields(actor=actor_id, id=id_text, outcome=outcome, duration_ms=duration_ms)
        if held:
            extra[FIELDS_ATTR]["held_back"] = held
        log.info("process actor=%s id=%s outcome=%s duration_ms=%.1f%s", actor_id, id_text,
                 outcome, duration_ms, f" ({held} more like it not logged)" if held else "",
                 extra=extra)

    def _actor_label(self, actor_id: str) -> str:
        try:
            return self.runtime.get(actor_id).id
        except RpcError:  # not found (or, on a cluster front, Redis unreachable)
            return UNKNOWN_ACTOR


def _emitter(call: Call) -> Emit:
    async def emit(kind: str, params: dict[str, Any]) -> None:
        await call.notify(kind, {"request_id": call.id, **params})

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
