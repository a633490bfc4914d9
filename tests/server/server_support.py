"""Helpers of the server tests: paths, and a raw JSON-RPC view of a WebSocket."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from service.runtime import Runtime
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
ACTORS = Path(__file__).parent / "actors"
RECEIVE_TIMEOUT_S = 30
_ABSENT = object()


class Rpc:
    """A raw JSON-RPC view of one WebSocket: send frames, read every message in order."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0

    async def send(self, message: Any) -> None:
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def recv(self) -> Any:
        msg = await self.ws.receive(timeout=RECEIVE_TIMEOUT_S)
        assert msg.type == WSMsgType.TEXT, (msg.type, msg.data)
        return json.loads(msg.data)

    async def request(self, method: str, params: Any = _ABSENT,
                      request_id: Any = _ABSENT) -> tuple[list[Any], Any]:
        """Send one request; return (the messages before its response, its response)."""
        if request_id is _ABSENT:
            self._next_id += 1
            request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not _ABSENT:
            message["params"] = params
        await self.send(message)
        return await self.until_response(request_id)

    async def until_response(self, request_id: Any) -> tuple[list[Any], Any]:
        before = []
        while True:
            message = await self.recv()
            if (isinstance(message, dict) and "method" not in message
                    and message.get("id") == request_id
                    and type(message.get("id")) is type(request_id)):
                return before, message
            before.append(message)

    async def call(self, method: str, params: Any = _ABSENT) -> Any:
        """The response of one request (notifications before it are dropped)."""
        return (await self.request(method, params))[1]


RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]
ServerFactory = Callable[..., Awaitable[TestClient]]
