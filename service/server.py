"""The aiohttp application: JSON-RPC over WebSocket at `/`, plus `/healthz` and `/metrics`.

The handler here only reads frames and writes what the core (``service.rpc.core``)
gives back. Each frame is handled in a task of its own so that calls run
concurrently; writes to one socket are serialized by a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from service.eventloop import Turns
from service.guard import (
    ConnectionGate,
    GuardedSite,
    RateLimitedLog,
    ensure_fd_headroom,
    guarded_protocol,
    loopback_dev_mode,
    origin_allowed,
    rate_limited_exception_handler,
    request_middleware,
)
from service.heap import settled
from service.log import CONNECTION, RateLimit, fields
from service.metrics import Metrics
from service.rpc.core import Connection, Dispatcher
from service.rpc.methods import Methods, register_methods
from service.runtime import Runtime, open_runtime
from service.settings import Settings, check_exposure

log = logging.getLogger(__name__)

CORK_S = 0.001  # how long a notification may wait for the response to leave with it
WRITE_CHECK_S = 1.0  # how often sessions are checked for a write that does not finish
CLOSE_S = 2.0  # for a session's close frame to leave at shutdown; then it is cut
# Frames of one connection being answered, beyond max_in_flight (answers refused -32008, or
# waiting to be written): past that its frames are not read until some answer has gone out.
FRAME_SLACK = 16
# Frames a session reads before the loop's other work runs (each frame's task parses it in
# the loop's next turn: 20 frames of 1 MiB, or 100,000 pings, were one turn of seconds).
TURN_FRAMES = 8
TURN_BYTES = 256 << 10


def _cancelled() -> bool:
    """Is the running task being cancelled (rather than handed another's CancelledError)?"""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class Session:
    """One WebSocket connection: its frame tasks and its serialized writer."""

    def __init__(self, ws: web.WebSocketResponse, dispatcher: Dispatcher,
                 admin: bool = False, sock: Any = None, max_frames: int = 80,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.dispatcher = dispatcher
        self.connection = Connection(self.send, admin=admin, notify_send=self.send_more)
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_frames = max_frames  # being answered at once; past it, reading waits
        self._room = asyncio.Event()  # set while fewer than max_frames are
        self._room.set()
        self._write_lock = asyncio.Lock()
        self._sock = sock  # the TCP socket, to cork (None: not TCP, or corking failed)
        self._uncork_timer: asyncio.TimerHandle | None = None  # set while corked
        self._transport = transport  # to cut the connection (None: aiohttp closes it)
        self._waiting: dict[int, float] = {}  # loop time each message to write began to wait
        self._tickets = itertools.count()

    @property
    def oldest_wait(self) -> float | None:
        """Loop time the longest-waiting message (queued or being written) began to wait."""
        return next(iter(self._waiting.values()), None)

    async def send(self, text: str, *, more: bool = False) -> None:
        """Write one frame; dropped (not raised) once the socket is closing. ``more``: the
        caller expects to write again soon (a call's response follows its notifications).
        How long it waits, for the writes before it and for its own, is watched: a client
        that takes its answers more slowly than they come is cut (AppState.watch_writes)."""
        ticket = next(self._tickets)
        self._waiting[ticket] = asyncio.get_running_loop().time()
        try:
            async with self._write_lock:
                if self.ws.closed:
                    log.debug("connection closed; dropping a %d-byte message", len(text))
                    return
                if more:
                    self._cork()
                await self._write(text)
                if not more:  # a response: what was corked before it leaves with it, now
                    self._uncork()
        finally:
            del self._waiting[ticket]

    async def _write(self, text: str) -> None:
        try:
            await self.ws.send_str(text)
        except ConnectionError as exc:
            log.debug("connection lost while sending: %s", exc)
        except asyncio.CancelledError:
            # aiohttp's writes wait on one shared future, which a cancelled write cancels:
            # the next write gets a CancelledError of its own. The client takes nothing; it
            # is cut.
            if _cancelled():
                raise
            log.debug("connection cut: a write waiting for the client was cancelled")
            self.cut()

    def cut(self) -> None:
        """Drop the connection now, unsent bytes and all: its reader ends, its calls are
        cancelled, a write waiting on it fails."""
        if self._transport is not None and not self._transport.is_closing():
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()
            else:
                self._transport.close()

    async def close(self, code: int, message: bytes) -> None:
        """Cancel the calls in flight, then send the close frame; a client that does not
        read has CLOSE_S to take it before the connection is cut."""
        await self.cancel_all()
        try:
            async with asyncio.timeout(CLOSE_S):
                await self.ws.close(code=code, message=message)
        except TimeoutError:
            log.info("cutting a connection that did not take its close frame in %g s",
                     CLOSE_S)
            self.cut()
        except asyncio.CancelledError:
            if _cancelled():
                raise
            self.cut()  # (a write the client did not take was cancelled: see send)

    async def send_more(self, text: str) -> None:
        await self.send(text, more=True)

    def _cork(self) -> None:
        """Hold what is written until a response is written, or CORK_S at the latest: a
        notification and the response that follows it soon (a sandbox that answers within
        the millisecond) leave in one TCP segment, one transmit and one wake-up of the client
        instead of two. A notification of a call that runs on leaves CORK_S late at most."""
        if self._uncork_timer is not None or self._sock is None:
            return
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        except OSError:  # not TCP after all: never again
            self._sock = None
            return
        self._uncork_timer = asyncio.get_running_loop().call_later(CORK_S, self._uncork)

    def _uncork(self) -> None:
        if self._uncork_timer is None:
            return
        self._uncork_timer.cancel()
        self._uncork_timer = None
        with contextlib.suppress(OSError):  # closed meanwhile
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    async def run(self) -> None:
        """Read frames until the socket closes (or a frame is too big: aiohttp closes with 1009).

        A client that does not read its answers would have every further frame wait behind
        them, each holding its frame and its answer: once ``max_frames`` are being answered,
        the next frame is read only when one is done, and the client's writes block."""
        turns = Turns(TURN_FRAMES, TURN_BYTES)
        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                task = asyncio.create_task(self._answer(msg.data))
                self.tasks.add(task)
                task.add_done_callback(self._done)
                if len(self.tasks) >= self.max_frames:
                    self._room.clear()
                    await self._room.wait()
            elif msg.type == WSMsgType.PING:  # answered here, in turn with the other frames
                with contextlib.suppress(ConnectionError):  # closing: no pong needed
                    await self.ws.pong(msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("closing connection: %s (close code %s)", msg.data, self.ws.close_code)
                break
            await turns.took(len(msg.data) if isinstance(msg.data, str | bytes) else 0)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if len(self.tasks) < self.max_frames:
            self._room.set()

    async def _answer(self, frame: str | bytes) -> None:
        try:
            response = await self.dispatcher.handle_frame(frame, self.connection)
        except Exception:  # the core answers every error itself; this is a bug if it happens
            log.exception("unhandled error while answering a frame")
            return
        if response is not None:
            await self.send(response)

    async def cancel_all(self) -> None:
        """Cancel the calls in flight and wait until their sandboxes are released."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class AppState:
    """Everything the app holds; resources that need start/stop are set in cleanup_ctx."""

    settings: Settings
    runtime: Runtime | None
    extra_actors: tuple[Path, ...] = ()
    validate_results: bool = False
    dispatcher: Dispatcher = field(default_factory=Dispatcher)
    metrics: Metrics | None = None
    sessions: set[Session] = field(default_factory=set)
    draining: bool = False
    methods: Methods | None = None
    connection_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    auth_failures: RateLimit = field(default_factory=RateLimit)
    write_timeouts: RateLimitedLog = field(default_factory=RateLimitedLog)
    cluster: Any = None  # the ClusterNode in cluster mode (service.cluster.node)
    gate: ConnectionGate = field(init=False)  # the connection caps of serve()'s site

    def __post_init__(self) -> None:
        self.gate = ConnectionGate(self.settings.connections)

    def pool_stats(self) -> dict[str, tuple[int, int, int]]:
        return self.runtime.pool_stats() if self.runtime is not None else {}

    def boot_stats(self) -> dict[str, tuple[int, int]]:
        return self.runtime.boot_stats() if self.runtime is not None else {}

    def in_flight(self) -> set[asyncio.Task[None]]:
        return {task for session in self.sessions for task in session.tasks}

    def begin_drain(self) -> None:
        """From now on /healthz says 503, and new connections and process calls are refused."""
        self.draining = True
        if self.methods is not None:
            self.methods.draining = True

    async def drain(self, grace_s: float, force: asyncio.Event | None = None) -> None:
        """Let running calls finish for up to ``grace_s`` (or until ``force`` is set), then
        answer the rest -32009 "shutting down" and close every connection."""
        self.begin_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        forced = asyncio.ensure_future((force or asyncio.Event()).wait())
        try:
            while ((tasks := self.in_flight()) and not forced.done()
                   and (remaining := deadline - loop.time()) > 0):
                await asyncio.wait({*tasks, forced}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
        if self.methods is not None:
            self.methods.stopping = True
        await self.close_sessions()

    async def close_sessions(self) -> None:
        """Close every session at once (one that does not read delays none of the others)."""
        await asyncio.gather(*(session.close(WSCloseCode.GOING_AWAY, b"server shutting down")
                               for session in list(self.sessions)))

    async def watch_writes(self) -> None:
        """Cut a connection with an answer or notification that has waited more than
        ``connections.write_timeout_s`` to be written: its client does not read, or reads
        more slowly than its calls write. It would hold its answers, their calls' places in
        ``max_in_flight`` and the sandboxes of calls blocked on their notifications, for as
        long as it stays connected."""
        limit = self.settings.connections.write_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WRITE_CHECK_S)
            now = loop.time()
            for session in list(self.sessions):
                if (since := session.oldest_wait) is not None and now - since > limit:
                    self.write_timeouts.warning(
                        "write", "cutting a connection whose client did not take an answer "
                        "in %g s (connections.write_timeout_s)", limit)
                    session.cut()


STATE = web.AppKey("state", AppState)


def create_app(
    settings: Settings,
    runtime: Runtime | None = None,
    *,
    extra_actors: Sequence[Path | str] = (),
    validate_results: bool = False,
) -> web.Application:
    """The application. With ``runtime`` None, one is made (and closed) on the selected backend.

    A runtime passed in stays the caller's to close. ``validate_results`` checks every
    result against its OpenRPC schema (for tests).
    """
    app = web.Application(middlewares=[request_middleware(settings)])
    state = AppState(settings, runtime, tuple(map(Path, extra_actors)), validate_results)
    state.metrics = Metrics(state.pool_stats, connections=lambda: len(state.sessions),
                            boot_stats=state.boot_stats)
    app[STATE] = state
    app.router.add_get("/", websocket_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.cleanup_ctx.append(_runtime_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    async with contextlib.AsyncExitStack() as owned:
        host: Any = await _cluster_host(state, owned)
        if state.runtime is None and host is None:  # ours to start and close (a given one stays
            state.runtime = await owned.enter_async_context(  # the caller's)
                open_runtime(state.settings, state.extra_actors))
        state.dispatcher = Dispatcher(validate_results=state.validate_results,
                                      limits=state.settings.connections)
        state.methods = register_methods(
            state.dispatcher, host or state.runtime, state.metrics)  # type: ignore[arg-type]
        watcher = asyncio.ensure_future(state.watch_writes())
        try:
            yield
        finally:
            watcher.cancel()
        await state.close_sessions()


async def _cluster_host(state: AppState, owned: contextlib.AsyncExitStack) -> Any:
    """In cluster mode (service.cluster), the front the methods run on; else None."""
    if not state.settings.cluster.enabled:
        return None
    from service.cluster.node import needs_runtime, open_node

    if state.runtime is None and needs_runtime(state.settings):
        state.runtime = await owned.enter_async_context(
            open_runtime(state.settings, state.extra_actors))
    assert state.metrics is not None  # set by create_app
    state.cluster = await owned.enter_async_context(
        open_node(state.settings, state.runtime, state.metrics.registry,
                  grace_s=state.settings.shutdown_grace_s))
    return state.cluster.host


async def _on_shutdown(app: web.Application) -> None:
    await app[STATE].close_sessions()


def authorized(request: web.Request, tokens: Sequence[str]) -> bool:
    """True when no token is configured, or the request carries one (header or ?token=)."""
    if not tokens:
        return True
    return _carries_token(request, tokens)


def _carries_token(request: web.Request, tokens: Sequence[str]) -> bool:
    offered = request.query.get("token")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        offered = value.strip()
    if offered is None:
        return False
    # Compare against every token, always, so timing says nothing about which one matched.
    # Header bytes that are not UTF-8 arrive as lone surrogates: kept, they match no token.
    given = offered.encode("utf-8", "surrogateescape")
    matches = [hmac.compare_digest(given, token.encode()) for token in tokens]
    return any(matches)


def _client_tokens(settings: Settings) -> tuple[str, ...]:
    """Tokens that open a connection: call tokens and admin tokens (none: no token needed)."""
    auth = settings.auth
    return (*auth.tokens, *auth.admin_tokens) if auth.tokens else ()


def tcp_socket(request: web.Request) -> Any:
    """The connection's TCP socket (to cork), None on a Unix socket."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def is_admin(request: web.Request, settings: Settings) -> bool:
    """May this connection call `load`? With an admin token, or in loopback dev mode."""
    if settings.auth.admin_tokens:
        return _carries_token(request, settings.auth.admin_tokens)
    return loopback_dev_mode(settings)


def _forbidden_origin() -> web.HTTPForbidden:
    return web.HTTPForbidden(text="403: this Origin may not open a connection "
                                  "(connections.allowed_origins)\n")


def _unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text="401: a valid token is required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="actor-runtime"'})


def _refused(state: AppState, request: web.Request) -> web.HTTPUnauthorized:
    """The 401, logged: at most one line per interval however many come (a scan, a client
    with a stale token), saying how many were held back."""
    held = state.auth_failures.allow("auth")
    if held is not None:
        log.warning("refused a request without a valid token from %s to %s%s", request.remote,
                    request.path, f" ({held} more refused since the last line)" if held else "",
                    extra=fields(outcome="unauthorized", peer=request.remote,
                                 held_back=held))
    return _unauthorized()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """The JSON-RPC endpoint."""
    state = request.app[STATE]
    if not origin_allowed(request.headers.get("Origin"), state.settings):
        raise _forbidden_origin()  # a web page the operator did not list: never its tokens
    if not authorized(request, _client_tokens(state.settings)):
        raise _refused(state, request)
    if state.draining:  # the listener stays open during the drain so /healthz can say 503
        return web.Response(status=503, text="503: shutting down\n", headers={"Retry-After": "1"})
    # aiohttp refuses a frame of max_msg_size bytes itself; the limit is what may be sent
    # No permessage-deflate (1 KB inflated to a 1 MiB frame to parse: 80 of them held the
    # loop 6 s); pings are answered by Session.run, which takes turns (aiohttp answers a
    # whole burst of them, 100,000 in one read, before anything else runs).
    ws = web.WebSocketResponse(max_msg_size=state.settings.max_message_bytes + 1,
                               compress=False, autoping=False)
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text="JSON-RPC 2.0 over WebSocket: upgrade required\n",
                            headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    protocol = guarded_protocol(request)
    if protocol is not None:
        if not protocol.session_room():
            return web.Response(status=503, text="503: every session slot is taken "
                                "(connections.max_connections)\n", headers={"Retry-After": "1"})
        protocol.became_session()  # before prepare, which may wait: the slot is taken now
    await ws.prepare(request)
    session = Session(ws, state.dispatcher, admin=is_admin(request, state.settings),
                      sock=tcp_socket(request),
                      max_frames=state.settings.connections.max_in_flight + FRAME_SLACK,
                      transport=request.transport)
    state.sessions.add(session)
    # Every line logged while serving this connection carries these (JSON log fields).
    CONNECTION.set({"connection": next(state.connection_ids), "peer": request.remote})
    log.debug("connection from %s", request.remote)
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        await session.cancel_all()  # closing the connection cancels its calls in flight
        log.debug("connection from %s closed (code %s)", request.remote, ws.close_code)
    return ws


async def healthz_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.cluster is not None:
        serving, body = state.cluster.health()
        return web.json_response(body, status=200 if serving and not state.draining else 503)
    if state.runtime is None or state.draining:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok", "actors": len(state.runtime.actors())})


async def metrics_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not authorized(request, _client_tokens(state.settings)):
        raise _refused(state, request)
    assert state.metrics is not None  # set by create_app
    return web.Response(body=state.metrics.render(),
                        headers={"Content-Type": state.metrics.content_type})


async def serve(settings: Settings, extra_actors: Sequence[Path | str] = ()) -> None:
    """Serve until SIGINT/SIGTERM, then drain: stop accepting, let calls finish, close."""
    check_exposure(settings)
    ensure_fd_headroom(settings)
    app = create_app(settings, extra_actors=extra_actors)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()  # starts the runtime: manifest or backend problems raise here
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(rate_limited_exception_handler(app[STATE].gate.reports))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _on_signal, stop, force)
    try:
        site = GuardedSite(runner, settings.host, settings.port, app[STATE].gate)
        await site.start()
        log.info("serving JSON-RPC on ws://%s:%d/", settings.host, settings.port)
        async with settled():
            await stop.wait()
            log.info("shutting down: draining calls for up to %ss (signal again to stop now)",
                     settings.shutdown_grace_s)
            # The listener stays open during the drain: /healthz answers 503 so a load
            # balancer stops routing here, and new connections and calls get a clear refusal.
            await app[STATE].drain(settings.shutdown_grace_s, force)
        await site.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await runner.cleanup()
        log.info("stopped")


FORCED_EXIT_S = 5  # after a second signal, the most cleanup may take before a hard exit


def _on_signal(stop: asyncio.Event, force: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: drain. Second: end the grace now (calls are answered and their
    sandboxes killed), and exit hard if even that hangs. Third: exit at once."""
    if not stop.is_set():
        stop.set()
    elif not force.is_set():
        log.warning("second signal: stopping running calls now")
        force.set()
        asyncio.get_running_loop().call_later(FORCED_EXIT_S, _hard_exit)
    else:
        _hard_exit()


def _hard_exit() -> None:
    log.error("forced exit")
    logging.shutdown()
    os._exit(EXIT_SIGINT)


EXIT_SIGINT = 130
