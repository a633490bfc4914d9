"""A small async client for the runtime's WebSocket JSON-RPC protocol.

    async with connect("ws://127.0.0.1:5556/", token=None) as client:
        actors = await client.list()
        async with client.process("doubler", {"input": 21}) as call:
            async for event in call:      # Output / Log as they arrive, then the Result
                print(event)
        print(call.result.outputs)        # {"output": 42}
        # or, ignoring the events: result = await client.process("doubler", {"input": 21})

Leaving the ``async with`` block before the result (an exception, a ``break``), a call
timeout, or cancelling the task that awaits the call, cancels the call on the server too,
so an abandoned call does not hold a sandbox until it ends.

Robustness, all settable on :func:`connect`: a connect timeout, a per-call timeout
(``call_timeout_s``, or ``timeout_s`` on one call), a WebSocket heartbeat that detects a dead
peer, reconnection before the next call once the connection is lost, and, opt-in, retries of
calls refused with -32008 (busy) or -32009 (sandbox unavailable, e.g. a server shutting down)
after the server's ``retry_after_ms`` (:class:`RetryPolicy`).

Every error is a :class:`ClientError`: :class:`RpcCallError` (the server answered with an
error: ``code``, ``message``, ``data``), :class:`TransportError` (:class:`ConnectFailed`,
:class:`ConnectionClosed`: the network, never an aiohttp exception) or :class:`CallTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

BUSY, SANDBOX_UNAVAILABLE, CANCELLED = -32008, -32009, -32010
CANCEL_TIMEOUT_S = 5.0  # for the cancel request sent on behalf of an abandoned call


# --- errors ------------------------------------------------------------------------------


class ClientError(Exception):
    """Anything that went wrong with a call made through this client."""


class RpcCallError(ClientError):
    """The server answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    @property
    def retry_after_ms(self) -> int | None:
        """The server's hint (on -32008), when it gave one."""
        value = self.data.get("retry_after_ms") if isinstance(self.data, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class TransportError(ClientError, ConnectionError):
    """The network failed; whether a call in flight ran on the server is unknown."""


class ConnectFailed(TransportError):
    """The connection could not be opened; ``status`` is the HTTP status when there was one
    (401: a missing or wrong token; 503: the server is shutting down)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(TransportError):
    """The connection closed before the answer came."""


class CallTimeout(ClientError, TimeoutError):
    """No answer within the call's timeout; the call was cancelled on the server."""


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """A value the actor sent on an outport (an `output` notification)."""

    port: str
    data: Any
    seq: int
    timestamp: int
    actor_id: str


@dataclass(frozen=True)
class Log:
    """A line the actor printed (a `log` notification)."""

    stream: str
    message: str
    actor_id: str


@dataclass(frozen=True)
class Result:
    """The result of a `process` call; always the last event."""

    outputs: dict[str, Any]
    emitted: list[dict[str, Any]]
    return_value: Any
    state: dict[str, Any]
    duration_ms: float

    @classmethod
    def from_json(cls, result: dict[str, Any]) -> Result:
        return cls(result["outputs"], result["emitted"], result["return"], result["state"],
                   result["duration_ms"])


Event = Output | Log | Result
Stream = asyncio.Queue[Event | BaseException]


@dataclass(frozen=True)
class RetryPolicy:
    """Which refusals to retry and how long to wait: the server's ``retry_after_ms`` when it
    gives one, else ``backoff_s`` doubled at each attempt; never longer than ``max_delay_s``.

    Only refusals are retried: the server did not run the call. A process call is retried
    only while none of its events has been seen."""

    attempts: int = 3  # retries after the first try
    codes: frozenset[int] = frozenset({BUSY, SANDBOX_UNAVAILABLE})
    backoff_s: float = 0.2
    max_delay_s: float = 10.0

    def delay_s(self, error: RpcCallError, attempt: int) -> float | None:
        """Seconds to wait before retry number ``attempt`` (0-based); None: do not retry."""
        if attempt >= self.attempts or error.code not in self.codes:
            return None
        hint = error.retry_after_ms
        wait = hint / 1000 if hint is not None else self.backoff_s * 2 ** attempt
        return min(wait, self.max_delay_s)


# --- a process call ----------------------------------------------------------------------


class ProcessCall:
    """One `process` call: iterate it for its events, await it for its Result, or use it in
    ``async with`` so that leaving the block early cancels it on the server."""

    def __init__(self, client: Client, params: dict[str, Any], timeout_s: float | None) -> None:
        self.request_id = client.next_id()
        self.result: Result | None = None
        self._client = client
        self._params = params
        self._timeout_s = timeout_s
        self._queue: Stream | None = None
        self._events_seen = 0
        self._finished = False  # a result or an error came: nothing to cancel

    def _start(self) -> Stream:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._client.start_process(self.request_id, self._params, self._queue)
        return self._queue

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout_s is None else loop.time() + self._timeout_s
        for attempt in itertools.count():
            try:
                async for event in self._attempt(deadline):
                    yield event
                return
            except RpcCallError as exc:
                delay = self._client.retry_delay_s(exc, attempt)
                if delay is None or self._events_seen:
                    raise
            await asyncio.sleep(delay)
            self._restart()

    async def _attempt(self, deadline: float | None) -> AsyncIterator[Event]:
        queue = self._start()
        while self.result is None:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await queue.get()
            except TimeoutError:
                await self.abandon()
                raise CallTimeout(f"no result within {self._timeout_s:g} s; cancelled") from None
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            if isinstance(item, Result):
                self.result = item
                self._finished = True
            self._events_seen += 1
            yield item

    def _restart(self) -> None:
        self.request_id = self._client.next_id()
        self._queue = None
        self._finished = False

    def __await__(self) -> Generator[Any, None, Result]:
        return self._wait().__await__()

    async def _wait(self) -> Result:
        try:
            async for _ in self:
                pass
        except asyncio.CancelledError:  # the awaiting task was cancelled (or timed out)
            self._client.spawn(self.abandon())
            raise
        assert self.result is not None
        return self.result

    async def cancel(self) -> bool:
        """Ask the server to cancel this call; the iteration then raises RpcCallError -32010."""
        return await self._client.cancel(self.request_id)

    async def abandon(self) -> None:
        """Cancel the call on the server if it may still run; errors are only logged."""
        if self._queue is None or self._finished:
            return
        self._finished = True
        self._client.forget(self.request_id)
        try:
            await asyncio.wait_for(self._client.cancel(self.request_id), CANCEL_TIMEOUT_S)
        except (ClientError, TimeoutError) as exc:
            log.debug("could not cancel abandoned call %s: %s", self.request_id, exc)

    async def __aenter__(self) -> ProcessCall:
        self._start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.result is None:
            await asyncio.shield(self.abandon())


# --- the client --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectOptions:
    """How :class:`Client` opens (and re-opens) its connection."""

    url: str
    headers: dict[str, str]
    max_msg_size: int = 0  # 0: no limit
    connect_timeout_s: float = 10.0
    heartbeat_s: float | None = 20.0  # ping this often; no pong in time closes the connection
    reconnect_attempts: int = 3  # before a call, when the connection was lost; 0: never
    reconnect_backoff_s: float = 0.2


class Client:
    """A connection to the server. Build it with :func:`connect`."""

    def __init__(self, session: aiohttp.ClientSession, options: ConnectOptions, *,
                 call_timeout_s: float | None = None, retry: RetryPolicy | None = None) -> None:
        self._session = session
        self._options = options
        self._call_timeout_s = call_timeout_s
        self._retry = retry
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, Stream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # --- connection ---

    async def open(self) -> None:
        """Open the connection (once; :func:`connect` does it); ConnectFailed when it cannot."""
        self._ws = await self._connect_once()
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _connect_once(self) -> aiohttp.ClientWebSocketResponse:
        o = self._options
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                return await self._session.ws_connect(
                    o.url, headers=o.headers, max_msg_size=o.max_msg_size,
                    heartbeat=o.heartbeat_s)
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectFailed(f"{o.url}: HTTP {exc.status} {exc.message}", exc.status) \
                from exc
        except TimeoutError as exc:
            raise ConnectFailed(f"{o.url}: no connection within {o.connect_timeout_s:g} s") \
                from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(f"{o.url}: {exc}") from exc

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        """The open WebSocket, reconnecting first when the last one was lost."""
        if self._ws is not None and not self._ws.closed:
            return self._ws
        async with self._connecting:
            if self._closed:
                raise ConnectionClosed("the client is closed")
            if self._ws is not None and not self._ws.closed:
                return self._ws
            await self._reconnect()
            assert self._ws is not None
            return self._ws

    async def _reconnect(self) -> None:
        o = self._options
        if o.reconnect_attempts <= 0:
            raise ConnectionClosed("the connection is closed (reconnect_attempts = 0)")
        for attempt in range(o.reconnect_attempts):
            try:
                await self.open()
                log.info("reconnected to %s", o.url)
                return
            except ConnectFailed as exc:
                if attempt + 1 == o.reconnect_attempts or exc.status == 401:
                    raise
                await asyncio.sleep(o.reconnect_backoff_s * 2 ** attempt)

    # --- requests ---

    def next_id(self) -> int:
        return next(self._ids)

    def retry_delay_s(self, error: RpcCallError, attempt: int) -> float | None:
        return None if self._retry is None else self._retry.delay_s(error, attempt)

    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   timeout_s: float | None = None) -> Any:
        """Send a request and wait for its result; RpcCallError on an error response,
        CallTimeout after ``timeout_s`` (default: the client's call_timeout_s)."""
        timeout_s = self._call_timeout_s if timeout_s is None else timeout_s
        for attempt in itertools.count():
            try:
                return await self._call_once(method, params, timeout_s)
            except RpcCallError as exc:
                delay = self.retry_delay_s(exc, attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    async def _call_once(self, method: str, params: dict[str, Any] | None,
                         timeout_s: float | None) -> Any:
        request_id = self.next_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(request_id, method, params)
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise CallTimeout(f"{method}: no answer within {timeout_s:g} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def list(self) -> list[dict[str, Any]]:
        """Every loaded actor's Descriptor, sorted by id."""
        result = await self.call("list", {})
        actors: list[dict[str, Any]] = result["actors"]
        return actors

    async def describe(self, actor_id: str) -> dict[str, Any]:
        descriptor: dict[str, Any] = await self.call("describe", {"actor_id": actor_id})
        return descriptor

    async def load(self, file_path: str) -> dict[str, Any]:
        """Load a manifest; the result has ``actor`` (a Descriptor) and ``replaced``."""
        result: dict[str, Any] = await self.call("load", {"file_path": file_path})
        return result

    async def cancel(self, request_id: Any) -> bool:
        result = await self.call("cancel", {"request_id": request_id})
        return bool(result["cancelled"])

    async def discover(self) -> dict[str, Any]:
        doc: dict[str, Any] = await self.call("rpc.discover")
        return doc

    def process(
        self,
        actor_id: str,
        payload: dict[str, Any],
        config: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        timestamp: float | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ProcessCall:
        """A process call; it is sent when first iterated, awaited or entered."""
        params: dict[str, Any] = {"actor_id": actor_id, "payload": payload}
        optional = {"config": config, "state": state, "timestamp": timestamp}
        params.update({k: v for k, v in optional.items() if v is not None})
        return ProcessCall(self, params, self._call_timeout_s if timeout_s is None else timeout_s)

    def start_process(self, request_id: int, params: dict[str, Any], queue: Stream) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._streams[request_id] = queue
        future.add_done_callback(lambda f: self._finish_stream(request_id, f))
        sending = self.spawn(self._send(request_id, "process", params))
        sending.add_done_callback(lambda sent: self._check_sent(request_id, sent))

    def forget(self, request_id: int) -> None:
        """Stop routing answers and events of ``request_id`` (an abandoned call)."""
        future = self._pending.pop(request_id, None)
        self._streams.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background, holding a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_sent(self, request_id: int, sent: asyncio.Future[None]) -> None:
        error = ConnectionClosed("the request was not sent") if sent.cancelled() else (
            sent.exception())
        future = self._pending.pop(request_id, None) if error is not None else None
        if future is not None and not future.done():
            future.set_exception(error)  # type: ignore[arg-type]

    def _finish_stream(self, request_id: int, future: asyncio.Future[Any]) -> None:
        queue = self._streams.pop(request_id, None)
        if queue is None:
            return
        if future.cancelled():
            queue.put_nowait(ConnectionClosed("the call was abandoned"))
        elif future.exception() is not None:
            queue.put_nowait(future.exception())  # type: ignore[arg-type]
        else:
            queue.put_nowait(Result.from_json(future.result()))

    async def _send(self, request_id: int, method: str, params: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        ws = await self._connected()
        try:
            await ws.send_str(json.dumps(message))
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:  # closing: RuntimeError
            raise ConnectionClosed(f"could not send {method}: {exc}") from exc

    # --- answers ---

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        error: TransportError = ConnectionClosed("connection closed")
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._dispatch(json.loads(msg.data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            error = TransportError(f"invalid message from the server: {exc}")
            await ws.close()
        except (aiohttp.ClientError, OSError) as exc:
            error = ConnectionClosed(f"connection lost: {exc}")
        finally:
            if isinstance(error, ConnectionClosed):
                error = ConnectionClosed(f"connection closed (code {ws.close_code})")
            self._close_all(error)

    def _dispatch(self, message: Any) -> None:
        for item in message if isinstance(message, list) else [message]:
            if "method" in item:
                self._notification(item["method"], item.get("params", {}))
                continue
            future = self._pending.pop(item.get("id"), None)
            if future is None or future.done():
                continue
            if "error" in item:
                error = item["error"]
                future.set_exception(RpcCallError(error["code"], error["message"],
                                                  error.get("data")))
            else:
                future.set_result(item.get("result"))

    def _notification(self, method: str, params: dict[str, Any]) -> None:
        queue = self._streams.get(params.get("request_id"))  # type: ignore[arg-type]
        if queue is None:
            return
        if method == "output":
            queue.put_nowait(Output(params["port"], params["data"], params["seq"],
                                    params["timestamp"], params["actor_id"]))
        elif method == "log":
            queue.put_nowait(Log(params["stream"], params["message"], params["actor_id"]))

    def _close_all(self, exc: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def connect(
    url: str,
    token: str | None = None,
    *,
    max_msg_size: int = 0,
    connect_timeout_s: float = 10.0,
    call_timeout_s: float | None = None,
    heartbeat_s: float | None = 20.0,
    reconnect_attempts: int = 3,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[Client]:
    """Open a connection; ``token`` goes in ``Authorization: Bearer``.

    ``max_msg_size`` 0: no size limit. ``call_timeout_s`` None: calls wait as long as the
    server lets them run. ``reconnect_attempts``: how often to try to re-open a lost
    connection before the next call (0: never). ``retry``: resend refused calls
    (RetryPolicy()); off by default, since only the caller knows whether that is wanted.
    ConnectFailed when the first connection cannot be opened.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options = ConnectOptions(url, headers, max_msg_size, connect_timeout_s, heartbeat_s,
                             reconnect_attempts)
    async with aiohttp.ClientSession() as session:
        client = Client(session, options, call_timeout_s=call_timeout_s, retry=retry)
        await client.open()
        try:
            yield client
        finally:
            await client.aclose()
