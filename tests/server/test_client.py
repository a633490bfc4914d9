"""service.client against the real server on a real port."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from server_support import MANIFESTS, ServerFactory

from service.client import (
    CallTimeout,
    ClientError,
    ConnectFailed,
    ConnectionClosed,
    Log,
    Output,
    Result,
    RetryPolicy,
    RpcCallError,
    TransportError,
    connect,
)
from service.settings import AuthSettings


def _url(server: TestClient, path: str = "/") -> str:
    return str(server.make_url(path))


async def test_list_describe_load(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        actors = await client.list()
        assert "doubler" in [a["id"] for a in actors]
        assert (await client.describe("doubler"))["language"] == "python"
        loaded = await client.load(str(MANIFESTS / "doubler" / "doubler.yaml"))
        assert (loaded["success"], loaded["replaced"], loaded["actor"]["id"]) == (
            True, True, "doubler")
        assert (await client.discover())["openrpc"].startswith("1.")


async def test_process_events_then_result(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        call = client.process("chatty", {}, state={"n": 1})
        events = [event async for event in call]
    assert [type(e) for e in events] == [Log, Output, Log, Result]
    first_log, output, second_log, result = events
    assert first_log == Log("stdout", "first line", "chatty")
    assert (output.port, output.data, output.seq, output.actor_id) == (  # type: ignore[union-attr]
        "output", "between", 0, "chatty")
    assert second_log == Log("stderr", "to stderr", "chatty")
    assert call.result is result
    assert result.outputs == {"output": "between"}  # type: ignore[union-attr]
    assert result.state == {"n": 1, "seen": True}  # type: ignore[union-attr]
    assert result.return_value == {"status": "completed"}  # type: ignore[union-attr]


async def test_await_process_for_the_result(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        result = await client.process("doubler_js", {"input": 21})
        results = await asyncio.gather(*(client.process("doubler", {"input": n})
                                         for n in range(5)))
    assert result.outputs == {"output": 42}
    assert [r.outputs["output"] for r in results] == [0, 2, 4, 6, 8]


async def test_errors_are_typed(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        with pytest.raises(RpcCallError) as excinfo:
            await client.describe("ghost")
        assert (excinfo.value.code, excinfo.value.data) == (-32001, {"actor_id": "ghost"})
        with pytest.raises(RpcCallError) as excinfo:
            await client.process("doubler", {"input": "x"})
        assert excinfo.value.code == -32002
        with pytest.raises(RpcCallError) as excinfo:
            await client.call("nope")
        assert (excinfo.value.code, excinfo.value.message) == (-32601, "Method not found")


async def test_cancel_through_the_call(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        call = client.process("waiter", {"seconds": 30})
        events: list[Any] = []
        with pytest.raises(RpcCallError) as excinfo:
            async for event in call:
                events.append(event)
                assert await call.cancel() is True
        assert excinfo.value.code == -32010
        assert [type(e) for e in events] == [Output]
        assert await client.cancel(call.request_id) is False


async def test_token(make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(tokens=("s3cret",)))
    async with connect(_url(server), token="s3cret") as client:
        assert await client.cancel(1) is False


# --- abandoned calls are cancelled on the server ---


async def _outcome_count(server: TestClient, actor: str, outcome: str) -> float:
    text = await (await server.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f'service_calls_total{{actor="{actor}",outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _until_cancelled_on_the_server(server: TestClient, count: float = 1) -> None:
    async with asyncio.timeout(20):
        while await _outcome_count(server, "waiter", "cancelled") < count:
            await asyncio.sleep(0.05)


async def test_leaving_the_block_early_cancels_the_call_on_the_server(
        server: TestClient) -> None:
    async with connect(_url(server)) as client:
        async with client.process("waiter", {"seconds": 30}) as call:
            async for event in call:
                assert isinstance(event, Output)  # "started": the call runs
                break
        await _until_cancelled_on_the_server(server)
        assert call.result is None
        assert (await client.process("doubler", {"input": 2})).outputs == {"output": 4}


async def test_a_call_timeout_raises_and_cancels_on_the_server(server: TestClient) -> None:
    async with connect(_url(server)) as client:
        with pytest.raises(CallTimeout):
            await client.process("waiter", {"seconds": 30}, timeout_s=1)
        await _until_cancelled_on_the_server(server)


async def test_cancelling_the_awaiting_task_cancels_on_the_server(server: TestClient) -> None:
    async with connect(_url(server), call_timeout_s=60) as client:
        task = asyncio.ensure_future(client.process("waiter", {"seconds": 30}))
        async with asyncio.timeout(20):
            while not await _busy(server, "waiter"):
                await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until_cancelled_on_the_server(server)


async def _busy(server: TestClient, actor: str) -> bool:
    text = await (await server.get("/metrics")).text()
    return f'service_sandboxes_busy{{actor="{actor}"}} 1.0' in text


# --- transport errors, reconnect, retry: against a scripted server ---


class Scripted:
    """A WebSocket JSON-RPC server that answers from a script: each request pops the next
    answer; "close" closes the connection instead of answering."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.connections = 0

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        async for msg in ws:
            message = json.loads(msg.data)
            self.requests.append(message)
            answer = self.answers.pop(0)
            if answer == "close":
                await ws.close()
                break
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": message["id"], **answer}))
        return ws


@pytest.fixture
def scripted(aiohttp_client: Any) -> Callable[[list[Any]], Awaitable[tuple[Scripted, str]]]:
    async def make(answers: list[Any]) -> tuple[Scripted, str]:
        fake = Scripted(answers)
        app = web.Application()
        app.router.add_get("/", fake.handler)
        client = await aiohttp_client(app)
        return fake, str(client.make_url("/"))

    return make


BUSY = {"error": {"code": -32008, "message": "Busy", "data": {"retry_after_ms": 30}}}
RESULT = {"result": {"outputs": {"output": 4}, "emitted": [], "return": None, "state": {},
                     "duration_ms": 1.0}}


async def test_busy_is_retried_only_when_asked(scripted: Any) -> None:
    fake, url = await scripted([BUSY, BUSY, RESULT, BUSY])
    async with connect(url, retry=RetryPolicy(attempts=3)) as client:
        result = await client.process("doubler", {"input": 2})
    assert result.outputs == {"output": 4}
    assert [r["method"] for r in fake.requests] == ["process"] * 3
    assert len({r["id"] for r in fake.requests}) == 3  # each retry is a new request
    async with connect(url) as client:  # no RetryPolicy: the caller sees the refusal
        with pytest.raises(RpcCallError) as info:
            await client.call("list", {})
    assert (info.value.code, info.value.retry_after_ms) == (-32008, 30)


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(attempts=2, backoff_s=0.1, max_delay_s=1)
    busy = RpcCallError(-32008, "Busy", {"retry_after_ms": 250})
    unavailable = RpcCallError(-32009, "Sandbox unavailable", {"reason": "shutting down"})
    assert policy.delay_s(busy, 0) == 0.25  # the server's hint
    assert (policy.delay_s(unavailable, 0), policy.delay_s(unavailable, 1)) == (0.1, 0.2)
    assert policy.delay_s(unavailable, 2) is None  # attempts used up
    assert policy.delay_s(RpcCallError(-32004, "Actor failed"), 0) is None  # never retried
    assert policy.delay_s(RpcCallError(-32008, "Busy", {"retry_after_ms": 60_000}), 0) == 1


async def test_a_lost_connection_fails_the_call_then_reconnects(scripted: Any) -> None:
    fake, url = await scripted(["close", {"result": {"actors": []}}])
    async with connect(url) as client:
        with pytest.raises(ConnectionClosed) as info:
            await client.list()
        assert isinstance(info.value, TransportError) and isinstance(info.value, ClientError)
        assert await client.list() == []  # the next call opened a new connection
    assert fake.connections == 2


async def test_connect_errors_are_client_errors(make_server: ServerFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(ConnectFailed) as info:
            async with connect(f"ws://127.0.0.1:{port}/", connect_timeout_s=5):
                pass
    assert info.value.status is None
    server = await make_server(auth=AuthSettings(tokens=("s3cret",)))
    with pytest.raises(ConnectFailed) as info:
        async with connect(_url(server), token="wrong"):
            pass
    assert info.value.status == 401
