"""What a client may cost before the JSON-RPC core sees anything, and who may connect at all.

aiohttp bounds a request's head (line and header sizes) and a WebSocket frame
(``max_message_bytes``) itself. It has no deadline for a request head and no cap on open
connections, which this module adds around its protocol: a connection over
``connections.max_connections`` takes the place of the oldest open connection that is not a
WebSocket session and has no request being answered (an idle keep-alive, a request head still
coming), or is closed as soon as it is accepted when there is none: clients that never open a
session (no token, health checks kept alive) cannot hold every slot and lock the sessions out.
Nor can sessions lock out the probes: a few connections (``session_reserve``) are never
upgraded, so /healthz answers while idle sessions hold every other one.
One that has not sent a complete request head within ``connections.header_timeout_s`` (of
being accepted, or of its previous request) is closed. A WebSocket connection is left alone
once upgraded. A closed connection's unsent bytes are dropped (a peer that does not read must
not keep it open).

Browsers are kept out by :func:`host_allowed` (DNS rebinding) and :func:`origin_allowed`
(cross-site WebSocket). Errors the event loop reports at a high rate (``accept()`` out of
file descriptors) are logged at most once per interval, with a count of the rest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from service.settings import ConnectionSettings, Settings, is_loopback

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
FDS_PER_SANDBOX = 16  # pipes, pidfds and cgroup files of one process sandbox, with room
FDS_RESERVED = 256  # the server's own files, logs, listening sockets, DNS...
LOG_INTERVAL_S = 10.0


class RateLimitedLog:
    """Log a recurring message at most once per ``interval_s``, saying how many were skipped."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def should_log(self, key: str) -> tuple[bool, int]:
        """(log it now?, how many were skipped since the last one)."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._skipped.pop(key, 0)

    def warning(self, key: str, message: str, *args: Any) -> None:
        ok, skipped = self.should_log(key)
        if ok:
            suffix = f" ({skipped} more since the last report)" if skipped else ""
            log.warning(message + suffix, *args)


def session_reserve(max_connections: int) -> int:
    """Connections kept from WebSocket sessions for plain HTTP (/healthz, /metrics): an
    eighth of them, 1 to 16 (none when only one connection is allowed at all)."""
    return min(16, max(1, max_connections // 8)) if max_connections > 1 else 0


class ConnectionGate:
    """Open connections of one server, and the protocol wrapper that enforces the caps."""

    def __init__(self, limits: ConnectionSettings) -> None:
        self.limits = limits
        self.open = 0
        self.sessions = 0  # open connections upgraded to a WebSocket session
        # sessions that never close (idle clients) would otherwise take every slot, and a
        # probe of /healthz would find none
        self.max_sessions = limits.max_connections - session_reserve(limits.max_connections)
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        self.reports = RateLimitedLog()
        # admitted connections that are not (yet) WebSocket sessions, oldest first
        self.unvetted: dict[GuardedProtocol, None] = {}

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], GuardedProtocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's own."""
        return lambda: GuardedProtocol(self, factory)

    def make_room(self) -> bool:
        """Close the oldest connection that is no session and between requests; False when
        every open connection is a session or has a request being answered."""
        victim = next((p for p in self.unvetted if p.idle), None)
        if victim is None:
            return False
        self.evicted += 1
        self.reports.warning("evicted", "closing the oldest idle connection that is not a "
                             "session, for a new one (connections.max_connections)")
        victim.close()
        return True


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler, behind the connection cap and the request-head deadline."""

    def __init__(self, gate: ConnectionGate, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: Any = None  # aiohttp's RequestHandler once admitted
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = 0  # requests of this connection being handled (see the middleware)
        self._session = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        gate = self._gate
        if gate.open >= gate.limits.max_connections and not gate.make_room():
            gate.refused += 1
            gate.reports.warning("refused", "connection refused: %d connections open "
                                 "(connections.max_connections)", gate.open)
            transport.abort() if isinstance(transport, asyncio.Transport) else transport.close()
            return
        gate.open += 1
        gate.unvetted[self] = None
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._arm()

    @property
    def idle(self) -> bool:
        return self._active == 0

    def session_room(self) -> bool:
        """May this connection become a session? Not when ``max_sessions`` are open."""
        return self._session or self._gate.sessions < self._gate.max_sessions

    def became_session(self) -> None:
        """The connection is a WebSocket session now (its token, if any, checked)."""
        self._gate.unvetted.pop(self, None)
        if not self._session:
            self._session = True
            self._gate.sessions += 1

    def close(self) -> None:
        self._disarm()
        self._gate.unvetted.pop(self, None)
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()  # close() would wait for a peer that does not read
        elif self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._gate.unvetted.pop(self, None)
        if self._session:
            self._session = False
            self._gate.sessions -= 1
        if self._inner is not None:
            self._gate.open -= 1
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # --- the request-head deadline, driven by request_middleware ---

    def request_started(self) -> None:
        self._active += 1
        self._disarm()

    def request_finished(self) -> None:
        self._active -= 1
        if self._active == 0 and self._inner is not None:
            self._arm()  # a kept-alive connection has as long for its next request head

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.limits.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and self._active == 0:
            self._gate.timed_out += 1
            log.debug("closing a connection: no complete request in %ss",
                      self._gate.limits.header_timeout_s)
            self.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGate`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # runner.setup() made it
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._gate.wrap(server), self._host, self._port, backlog=self._backlog,
            reuse_address=True)
        if self._server.sockets:
            self.bound_port = self._server.sockets[0].getsockname()[1]


def guarded_protocol(request: web.Request) -> GuardedProtocol | None:
    """The gate's protocol of this request's connection (None in aiohttp's test server)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, GuardedProtocol) else None


# --- browsers ---


def _host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, settings: Settings) -> bool:
    """Is ``header`` (the request's Host) one this server answers to?

    Allowed: no Host at all, ``connections.allowed_hosts``, the bind address, and the
    loopback forms (``localhost``, ``127.0.0.1``, ``[::1]``). A wildcard bind (``0.0.0.0``)
    with no ``allowed_hosts`` accepts any name: the server cannot know its public names.
    """
    if header is None:
        return True
    allowed = {h.lower().rstrip(".") for h in settings.connections.allowed_hosts}
    if settings.host in WILDCARD_HOSTS and not allowed:
        return True
    name = _host_name(header)
    return name in allowed or name == settings.host.lower() or _is_loopback_name(name)


def origin_allowed(origin: str | None, settings: Settings) -> bool:
    """No Origin (not a browser), or one listed in ``connections.allowed_origins``."""
    if origin is None:
        return True
    listed = {o.strip().rstrip("/").lower() for o in settings.connections.allowed_origins}
    return origin.strip().rstrip("/").lower() in listed


# Probes (Kubernetes sends the pod's IP as Host) reach /healthz whatever the Host; it tells
# nothing a rebinding page could use.
HOST_UNCHECKED_PATHS = frozenset({"/healthz"})


def request_middleware(settings: Settings) -> Any:
    """Refuse an unknown Host (421) and stop the request-head deadline while a request runs."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in HOST_UNCHECKED_PATHS and not host_allowed(
                request.headers.get("Host"), settings):
            raise web.HTTPMisdirectedRequest(text="421: unknown Host for this server\n")
        protocol = guarded_protocol(request)
        if protocol is not None:
            protocol.request_started()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            if protocol is not None:
                protocol.request_finished()

    return guard


# --- file descriptors and the event loop's own reports ---


def ensure_fd_headroom(settings: Settings) -> None:
    """Raise the soft RLIMIT_NOFILE to what the connection and sandbox caps need (within the
    hard limit), so a full server refuses connections rather than run out of descriptors."""
    need = (settings.connections.max_connections + FDS_RESERVED
            + FDS_PER_SANDBOX * settings.capacity.max_sandboxes)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("only %d file descriptors (hard limit) for %d connections and %d "
                    "sandboxes; lower connections.max_connections or raise the limit",
                    soft, settings.connections.max_connections, settings.capacity.max_sandboxes)


def rate_limited_exception_handler(
        reports: RateLimitedLog) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler that reports each kind of error at most once per interval
    (``accept()`` out of descriptors repeats every time the listening socket is ready)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        ok, skipped = reports.should_log(str(context.get("message")))
        if ok:
            if skipped:
                context = {**context, "message": f"{context.get('message')} "
                           f"({skipped} more since the last report)"}
            loop.default_exception_handler(context)

    return handle


def loopback_dev_mode(settings: Settings) -> bool:
    """No token of any kind, on a loopback address: every local client is trusted (dev)."""
    auth = settings.auth
    return not auth.tokens and not auth.admin_tokens and is_loopback(settings.host)
