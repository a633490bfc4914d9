"""service.client against the real server on a real port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from server_support import MANIFESTS, ServerFactory

from service.client import Log, Output, Result, RpcCallError, connect
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
