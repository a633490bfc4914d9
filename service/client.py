"""A small async client for the runtime's WebSocket JSON-RPC protocol.

    async with connect("ws://127.0.0.1:5556/", token=None) as client:
        actors = await client.list()
        call = client.process("doubler", {"input": 21})
        async for event in call:          # Output / Log as they arrive, then the Result
            print(event)
        print(call.result.outputs)        # {"output": 42}
        # or, ignoring the events: result = await client.process("doubler", {"input": 21})

Errors come back as :class:`RpcCallError` (``code``, ``message``, ``data``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import aiohttp


class RpcCallError(Exception):
    """The server answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ConnectionClosed(ConnectionError):
    """The connection closed before the answer came."""


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


class ProcessCall:
    """One `process` call: iterate it for its events, or await it for its Result."""

    def __init__(self, client: Client, params: dict[str, Any]) -> None:
        self.request_id = client.next_id()
        self.result: Result | None = None
        self._client = client
        self._params = params
        self._queue: asyncio.Queue[Event | BaseException] | None = None

    def _start(self) -> asyncio.Queue[Event | BaseException]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._client.start_process(self.request_id, self._params, self._queue)
        return self._queue

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        queue = self._start()
        while self.result is None:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Result):
                self.result = item
            yield item

    def __await__(self) -> Generator[Any, None, Result]:
        return self._wait().__await__()

    async def _wait(self) -> Result:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> bool:
        """Ask the server to cancel this call; the iteration then raises RpcCallError -32010."""
        return await self._client.cancel(self.request_id)


class Client:
    """A connection to the server. Build it with :func:`connect`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Event | BaseException]] = {}
        self._reader = asyncio.create_task(self._read())

    def next_id(self) -> int:
        return next(self._ids)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and wait for its result; raises RpcCallError on an error response."""
        request_id = self.next_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self._send(request_id, method, params)
        return await future

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
    ) -> ProcessCall:
        """A process call; it is sent when first iterated or awaited."""
        params: dict[str, Any] = {"actor_id": actor_id, "payload": payload}
        optional = {"config": config, "state": state, "timestamp": timestamp}
        params.update({k: v for k, v in optional.items() if v is not None})
        return ProcessCall(self, params)

    def start_process(self, request_id: int, params: dict[str, Any],
                      queue: asyncio.Queue[Event | BaseException]) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._streams[request_id] = queue
        future.add_done_callback(lambda f: self._finish_stream(request_id, f))
        task = asyncio.ensure_future(self._send(request_id, "process", params))
        task.add_done_callback(lambda sent: self._check_sent(request_id, sent))

    def _check_sent(self, request_id: int, sent: asyncio.Future[None]) -> None:
        error = ConnectionClosed("the request was not sent") if sent.cancelled() else (
            sent.exception())
        future = self._pending.pop(request_id, None) if error is not None else None
        if future is not None and not future.done():
            future.set_exception(error)  # type: ignore[arg-type]

    def _finish_stream(self, request_id: int, future: asyncio.Future[Any]) -> None:
        queue = self._streams.pop(request_id)
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
        await self._ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._dispatch(json.loads(msg.data))
        finally:
            self._close_all(ConnectionClosed(f"connection closed (code {self._ws.close_code})"))

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
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connect(url: str, token: str | None = None, *,
                  max_msg_size: int = 0) -> AsyncIterator[Client]:
    """Open a connection; ``token`` goes in ``Authorization: Bearer``; 0 = no size limit."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url, headers=headers, max_msg_size=max_msg_size) as ws:
        client = Client(ws)
        try:
            yield client
        finally:
            await client.aclose()
