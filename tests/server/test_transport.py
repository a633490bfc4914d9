"""The WebSocket transport: frames, batches, ids, size limit, auth, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import platform
from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient
from server_support import Rpc, ServerFactory

from service.eventloop import Turns
from service.log import setup_logging
from service.settings import AuthSettings

INVALID_REQUEST = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
                   "id": None}


async def test_parse_error_has_a_null_id(rpc: Rpc) -> None:
    await rpc.send('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert await rpc.recv() == {"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32700, "message": "Parse error"}}


async def test_invalid_request(rpc: Rpc) -> None:
    await rpc.send('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert await rpc.recv() == INVALID_REQUEST
    await rpc.send('{"jsonrpc": "2.0", "method": "list", "id": true}')
    assert await rpc.recv() == INVALID_REQUEST
    await rpc.send('{"jsonrpc": "2.0", "method": "list", "id": {"a": 1}}')
    assert await rpc.recv() == INVALID_REQUEST


@pytest.mark.parametrize(("frame", "expected"), [
    ("[]", INVALID_REQUEST),
    ("[1]", [INVALID_REQUEST]),
    ("[1,2,3]", [INVALID_REQUEST] * 3),
])
async def test_invalid_batches(rpc: Rpc, frame: str, expected: Any) -> None:
    await rpc.send(frame)
    assert await rpc.recv() == expected


async def test_notifications_are_never_answered(rpc: Rpc) -> None:
    for frame in ('{"jsonrpc": "2.0", "method": "list"}',
                  '{"jsonrpc": "2.0", "method": "foobar"}',
                  '{"jsonrpc": "2.0", "method": "describe", "params": {"actor_id": "ghost"}}',
                  '{"jsonrpc": "2.0", "method": "load", "params": {}}',
                  '[{"jsonrpc": "2.0", "method": "list"}, {"jsonrpc": "2.0", "method": "x"}]'):
        await rpc.send(frame)
    # the first thing that comes back is the answer to this request: nothing came before it
    await rpc.send({"jsonrpc": "2.0", "method": "cancel", "params": [5], "id": "last"})
    assert await rpc.recv() == {"jsonrpc": "2.0", "id": "last", "result": {"cancelled": False}}


async def test_process_notification_runs_without_any_message(rpc: Rpc) -> None:
    await rpc.send({"jsonrpc": "2.0", "method": "process",
                    "params": {"actor_id": "doubler", "payload": {"input": 1}}})
    await rpc.send({"jsonrpc": "2.0", "method": "cancel", "params": [5], "id": "last"})
    assert await rpc.recv() == {"jsonrpc": "2.0", "id": "last", "result": {"cancelled": False}}


async def test_mixed_batch(rpc: Rpc) -> None:
    await rpc.send([
        {"jsonrpc": "2.0", "method": "describe", "params": ["doubler"], "id": "1"},
        {"jsonrpc": "2.0", "method": "list"},
        {"jsonrpc": "2.0", "method": "cancel", "params": {"request_id": 1}, "id": 2},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "process", "id": None,
         "params": {"actor_id": "doubler", "payload": {"input": 21}}},
    ])
    output = await rpc.recv()  # the process call's notification comes before the batch
    assert output["method"] == "output"
    assert output["params"]["request_id"] is None
    responses = await rpc.recv()
    assert [r["id"] for r in responses] == ["1", 2, None, "5", None]
    assert responses[0]["result"]["id"] == "doubler"
    assert responses[1] == {"jsonrpc": "2.0", "id": 2, "result": {"cancelled": False}}
    assert responses[2] == INVALID_REQUEST
    assert responses[3] == {"jsonrpc": "2.0", "id": "5",
                            "error": {"code": -32601, "message": "Method not found"}}
    assert responses[4]["result"]["outputs"] == {"output": 42}


async def test_binary_frames_hold_utf8_json(rpc: Rpc) -> None:
    await rpc.ws.send_bytes(json.dumps({"jsonrpc": "2.0", "method": "describe",
                                        "params": ["doubler"], "id": "bé"}).encode())
    response = await rpc.recv()
    assert response["id"] == "bé"
    assert response["result"]["id"] == "doubler"
    await rpc.ws.send_bytes(b'{"jsonrpc": "2.0", "method": "list", "id": "\xff"}')
    assert await rpc.recv() == {"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32700, "message": "Parse error"}}


async def test_oversized_frame_closes_1009_and_spares_other_connections(
        make_server: ServerFactory) -> None:
    server = await make_server(max_message_bytes=4096)
    big = await server.ws_connect("/")
    other = Rpc(await server.ws_connect("/"))
    frame = json.dumps({"jsonrpc": "2.0", "method": "list", "id": 1, "params": {"x": "a" * 5000}})
    await big.send_str(frame)
    msg = await big.receive(timeout=10)
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == WSCloseCode.MESSAGE_TOO_BIG == 1009
    assert (await other.call("list"))["result"]["actors"]
    # a frame of max_message_bytes exactly is fine (aiohttp refuses its own limit itself)
    head = '{"jsonrpc": "2.0", "method": "cancel", "id": 2, "params": ["'
    fits = head + "a" * (4096 - len(head) - 3) + '"]}'
    assert len(fits) == 4096
    await other.send(fits)
    assert await other.recv() == {"jsonrpc": "2.0", "id": 2, "result": {"cancelled": False}}
    await other.send(fits[:-3] + 'a"]}')  # one byte more
    msg = await other.ws.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


async def test_compression_is_not_negotiated(server: TestClient) -> None:
    """permessage-deflate would let 1 KB on the wire become a 1 MiB frame to parse."""
    ws = await server.ws_connect("/", compress=15)
    assert ws.compress == 0
    await ws.close()


async def test_a_ping_gets_its_pong(server: TestClient) -> None:
    ws = await server.ws_connect("/", autoping=False)
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
    await ws.close()


async def test_a_burst_of_pings_is_answered_in_turns(
        server: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 pings in one write (the server reads them at once) go through the session's
    turns like frames (aiohttp answered them all in one turn of the loop: 100,000 held it
    0.5 s), and each gets its pong."""
    taken: list[int] = []
    took = Turns.took

    async def counted(self: Turns, size: int = 0) -> None:
        taken.append(size)
        await took(self, size)

    monkeypatch.setattr(Turns, "took", counted)
    flood = await server.ws_connect("/", autoping=False)
    ping = bytes([0x89, 0x80, 0, 0, 0, 0])  # FIN + ping, masked (key 0), no payload
    flood._writer.transport.write(ping * 20_000)
    for _ in range(20_000):
        assert (await flood.receive(timeout=30)).type == WSMsgType.PONG
    assert len(taken) >= 20_000
    await flood.close()


# --- authentication ---


@pytest.fixture
async def guarded(make_server: ServerFactory) -> TestClient:
    return await make_server(auth=AuthSettings(tokens=("s3cret", "other-token")))


async def test_no_token_is_401_without_upgrade(guarded: TestClient) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await guarded.ws_connect("/")
    assert excinfo.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await guarded.ws_connect("/", headers={"Authorization": "Bearer wrong"})
    assert excinfo.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as excinfo:
        await guarded.ws_connect("/?token=s3cre")
    assert excinfo.value.status == 401
    response = await guarded.get("/metrics")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "headers"), [
    ("/", {"Authorization": "Bearer s3cret"}),
    ("/", {"Authorization": "bearer other-token"}),
    ("/?token=s3cret", {}),
])
async def test_token_in_header_or_query(guarded: TestClient, path: str,
                                        headers: dict[str, str]) -> None:
    ws = await guarded.ws_connect(path, headers=headers)
    assert (await Rpc(ws).call("cancel", [1]))["result"] == {"cancelled": False}
    await ws.close()


async def _raw_status(server: TestClient, head: bytes) -> bytes:
    """The status line the server answers to ``head`` (a raw request, any bytes)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return line.rstrip()


async def test_a_token_that_is_not_utf8_is_401_not_500(guarded: TestClient) -> None:
    head = (b"GET /metrics HTTP/1.1\r\nHost: " + f"{guarded.host}:{guarded.port}".encode()
            + b"\r\nAuthorization: Bearer \xff\xfes3cret\r\n\r\n")
    assert (await _raw_status(guarded, head)).endswith(b"401 Unauthorized")


async def test_a_request_that_cannot_be_parsed_logs_no_token(
        guarded: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp quotes the line it cannot parse: the token in it must not reach the log."""
    setup_logging("info")
    caplog.set_level(logging.INFO)
    head = b"GET /?token=s3cret&v=1\x7f HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await _raw_status(guarded, head)).endswith(b"400 Bad Request")
    await asyncio.sleep(0.1)
    assert "s3cret" not in caplog.text
    assert "refused a request it cannot parse" in caplog.text


async def test_healthz_needs_no_token(guarded: TestClient) -> None:
    response = await guarded.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


# --- plain HTTP ---


async def test_healthz(server: TestClient) -> None:
    response = await server.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["actors"] >= 3


async def test_plain_get_on_the_websocket_path(server: TestClient) -> None:
    response = await server.get("/")
    assert response.status == 426


async def test_metrics(server: TestClient, rpc: Rpc) -> None:
    await rpc.call("process", {"actor_id": "doubler", "payload": {"input": 1}})
    await rpc.call("process", {"actor_id": "doubler", "payload": {"input": "x"}})
    response = await server.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'service_calls_total{actor="doubler",outcome="ok"} 1.0' in text
    assert 'service_calls_total{actor="doubler",outcome="payload_invalid"} 1.0' in text
    assert 'service_call_duration_seconds_count{actor="doubler"} 2.0' in text
    assert 'service_sandboxes_busy{actor="doubler"} 0.0' in text
    assert 'service_queue_depth{actor="doubler"} 0.0' in text
    assert "service_sandboxes_idle{" in text


async def test_failed_authentication_is_logged_rate_limited(
        guarded: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="service.server"):
        for _ in range(20):
            assert (await guarded.get("/metrics")).status == 401
    (record,) = [r for r in caplog.records if "without a valid token" in r.getMessage()]
    assert record.getMessage().startswith("refused a request without a valid token from 127.0.0.1")
    assert record.service_fields["outcome"] == "unauthorized"  # type: ignore[attr-defined]


async def test_json_call_line_carries_the_call_and_the_connection(rpc: Rpc) -> None:
    import io

    from service.log import setup_logging

    stream = io.StringIO()
    setup_logging("info", "json", stream)
    await rpc.call("process", {"actor_id": "doubler", "payload": {"input": 1}})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry.get("outcome")]
    assert (line["actor"], line["id"], line["outcome"]) == ("doubler", "1", "ok")
    assert line["duration_ms"] > 0
    assert isinstance(line["connection"], int) and line["peer"] == "127.0.0.1"


async def test_metrics_for_day_2(server: TestClient, rpc: Rpc) -> None:
    """The process, open connections, the build, sandbox boots; and no _created series."""
    await rpc.call("process", {"actor_id": "doubler", "payload": {"input": 1}})
    text = await (await server.get("/metrics")).text()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["process_resident_memory_bytes"] > 0
    assert "process_open_fds" in samples and "process_cpu_seconds_total" in samples
    assert samples["service_connections"] == 1
    assert [k for k in samples if k.startswith("service_build_info{")] == [
        f'service_build_info{{python="{platform.python_version()}",'
        f'version="{version("actor-sandbox-service")}"}}']
    assert samples['service_sandbox_boots_total{actor="doubler"}'] >= 1
    assert samples['service_sandbox_boot_failures_total{actor="doubler"}'] == 0
    assert not [k for k in samples if "_created" in k]
