"""Hostile clients: what one frame, one connection or one web page can make the server do.

Each row attacks the real server (in process, or as its own process where the attack is on
its sockets or descriptors) and asserts from outside: the exact error, the bytes that came
back, the server's peak RSS, its log, and that /healthz still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from live_server import closed_by_server, live_server, open_idle

from service.log import setup_logging
from service.runtime import Runtime
from service.sandbox.process import ProcessBackend
from service.server import create_app
from service.settings import AuthSettings, CapacitySettings, ConnectionSettings, Settings

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SERVER_ACTORS = REPO / "tests" / "server" / "actors"
CALL_TOKEN = "call-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
RECEIVE_S = 30


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(manifest_paths=(MANIFESTS, SERVER_ACTORS),
                    allowed_roots=(MANIFESTS, SERVER_ACTORS, tmp_path), backend="process")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime(settings, ProcessBackend(settings))
    await rt.start()
    yield rt
    await rt.aclose()


@pytest.fixture
def serve(aiohttp_client: Any, settings: Settings, runtime: Runtime) -> Any:
    async def make(**changes: Any) -> TestClient:
        client: TestClient = await aiohttp_client(create_app(settings.replace(**changes), runtime))
        return client

    return make


async def answer(ws: aiohttp.ClientWebSocketResponse, frame: str) -> tuple[str, list[str]]:
    """Send one frame; (the text of its answer, the notifications before it)."""
    await ws.send_str(frame)
    notes = []
    while True:
        msg = await ws.receive(timeout=RECEIVE_S)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        if '"method"' in msg.data[:40]:
            notes.append(msg.data)
        else:
            return msg.data, notes


def request(method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return message


# --- one frame ---------------------------------------------------------------------------


async def test_a_batch_over_max_batch_is_one_small_error(serve: Any) -> None:
    client = await serve()
    ws = await client.ws_connect("/")
    frame = json.dumps([request("rpc.discover", request_id=i) for i in range(101)])
    text, _ = await answer(ws, frame)
    assert json.loads(text) == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "Invalid Request: a batch holds at most 100 requests, got 101"}}


async def test_a_batchs_answer_stops_at_max_response_bytes(serve: Any) -> None:
    """Each rpc.discover answer is ~8 KB: past 20 KB the rest are small errors."""
    client = await serve(connections=ConnectionSettings(max_response_bytes=20_000))
    ws = await client.ws_connect("/", max_msg_size=0)
    text, _ = await answer(ws, json.dumps([request("rpc.discover", request_id=i)
                                           for i in range(10)]))
    assert len(text) <= 20_000 + 2 * 10  # the commas and brackets of the array
    answers = json.loads(text)
    results = [a for a in answers if "result" in a]
    errors = [a["error"] for a in answers if "error" in a]
    assert len(results) == 2 and len(errors) == 8
    assert errors[0] == {"code": -32603, "message": "Internal error: the answer to this frame "
                         "is over 20000 bytes (connections.max_response_bytes)"}
    assert sorted(a["id"] for a in answers) == list(range(10))


async def test_a_long_id_is_refused_not_copied(serve: Any) -> None:
    """A 1 MB id was copied into every notification of its call."""
    client = await serve()
    ws = await client.ws_connect("/")
    long_id = "x" * 1_000_000
    frame = json.dumps(request("process", {"actor_id": "ticker", "payload": {"count": 5}},
                               long_id))
    text, notes = await answer(ws, frame)
    assert notes == [] and len(text) < 200
    assert json.loads(text) == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "Invalid Request: an id has at most 256 characters"}}


async def test_in_flight_calls_per_connection_are_capped(serve: Any) -> None:
    client = await serve(connections=ConnectionSettings(max_in_flight=2))
    ws = await client.ws_connect("/")
    for i in (1, 2):
        await ws.send_str(json.dumps(request(
            "process", {"actor_id": "sleeper", "payload": {"seconds": 30}}, i)))
    started = 0
    while started < 2:  # both run: each said so
        started += '"started"' in (await ws.receive(timeout=RECEIVE_S)).data
    text, _ = await answer(ws, json.dumps(request("list", request_id=3)))
    assert json.loads(text) == {"jsonrpc": "2.0", "id": 3, "error": {
        "code": -32008, "message": "Busy: this connection already has 2 requests in flight",
        "data": {"retry_after_ms": 100}}}
    # cancel is never refused: it is how a client frees its own slots
    text, _ = await answer(ws, json.dumps(request("cancel", {"request_id": 1}, 4)))
    assert json.loads(text)["result"] == {"cancelled": True}


async def test_the_frames_being_answered_are_held_to_the_request_memory(serve: Any) -> None:
    """Every client's frames together (connections.max_request_memory_mb): one client's
    32 frames of 1 MB of small lists, queued for a slow actor, held 800 MB before."""
    client = await serve(connections=ConnectionSettings(max_request_memory_mb=1))
    first, second = await client.ws_connect("/", max_msg_size=0), await client.ws_connect("/")
    padded = {"actor_id": "sleeper", "payload": {"seconds": 30},
              "state": {"pad": [[]] * 100_000}}  # 300 KB, ~25 MB counted: alone, it fits
    await first.send_str(json.dumps(request("process", padded, 1)))
    while '"started"' not in (await first.receive(timeout=RECEIVE_S)).data:
        pass
    text, _ = await answer(second, json.dumps(request("list", request_id=2)))
    refused = json.loads(text)
    assert refused["id"] == 2 and refused["error"]["code"] == -32008
    assert refused["error"]["data"] == {"retry_after_ms": 1000}
    assert refused["error"]["message"].startswith("Busy: the requests being answered hold ")
    # cancel is never refused; once the frame is answered, its memory is free again
    text, _ = await answer(second, json.dumps(request("cancel", {"request_id": 1}, 3)))
    assert json.loads(text)["result"] == {"cancelled": False}  # (not this connection's)
    await first.send_str(json.dumps(request("cancel", {"request_id": 1}, 4)))
    answered: set[Any] = set()
    while answered != {1, 4}:
        answered.add(json.loads((await first.receive(timeout=RECEIVE_S)).data).get("id"))
        answered.discard(None)
    text, _ = await answer(second, json.dumps(request("list", request_id=5)))
    assert "result" in json.loads(text)


# --- deep or odd input -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [900, 980, 995, 5000])
async def test_deep_values_always_get_an_answer(serve: Any, depth: int) -> None:
    """A state nested ~980 deep once got no answer at all (RecursionError in the encoder)."""
    client = await serve()
    ws = await client.ws_connect("/", max_msg_size=0)
    state = '{"a":' * depth + "{}" + "}" * depth
    frame = ('{"jsonrpc":"2.0","id":7,"method":"process","params":{"actor_id":"doubler",'
             f'"payload":{{"input":1}},"state":{state}}}}}')
    text, _ = await answer(ws, frame)
    reply = json.loads(text)
    if "result" in reply:  # shallow enough for every step
        assert reply["result"]["outputs"] == {"output": 2}
    else:
        assert reply["error"]["code"] in (-32603, -32700), reply
        assert reply["error"]["code"] == -32700 or "nested too deeply" in reply["error"]["message"]


async def test_client_text_cannot_forge_a_log_line(serve: Any) -> None:
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    try:
        client = await serve()
        ws = await client.ws_connect("/")
        forged = "nope\n2026-01-01 00:00:00,000 INFO service.server: admin logged in\r\x1b[2K"
        text, _ = await answer(ws, json.dumps(request(
            "process", {"actor_id": forged, "payload": {}}, "id\nFORGED")))
        assert json.loads(text)["error"]["code"] == -32001
    finally:
        logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers
                                           if getattr(h, "stream", None) is not stream]
    lines = stream.getvalue().splitlines()
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
    assert lines and all(record.match(line) for line in lines), lines
    assert "\x1b" not in stream.getvalue()
    assert any("actor=nope\\n2026-01-01" in line for line in lines), lines


# --- browsers ----------------------------------------------------------------------------


async def test_a_web_page_cannot_open_a_connection(serve: Any) -> None:
    client = await serve()
    for origin in ("https://evil.example", "null", "http://127.0.0.1:5556"):
        assert await upgrade_status(client, {"Origin": origin}) == 403, origin
    ws = await client.ws_connect("/")  # no Origin: not a browser
    assert json.loads((await answer(ws, json.dumps(request("list"))))[0])["result"]["actors"]


async def test_an_allowed_origin_may(serve: Any) -> None:
    client = await serve(connections=ConnectionSettings(
        allowed_origins=("https://flows.example",)))
    ws = await client.ws_connect("/", origin="https://flows.example")
    assert "result" in json.loads((await answer(ws, json.dumps(request("list"))))[0])


@pytest.mark.parametrize(("host", "status"), [
    ("evil.example", 421), ("evil.example:5556", 421), ("127.0.0.1.nip.io", 421),
    ("localhost:5556", 200), ("127.0.0.1", 200), ("[::1]:5556", 200),
    ("flows.internal", 200),
])
async def test_the_host_header_is_checked(serve: Any, host: str, status: int) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name as Host."""
    client = await serve(connections=ConnectionSettings(allowed_hosts=("flows.internal",)))
    response = await client.get("/metrics", headers={"Host": host})
    assert response.status == status
    ws_status = await upgrade_status(client, {"Host": host})
    assert ws_status == (101 if status == 200 else 421)
    # probes send whatever Host they like (a pod's IP): /healthz answers them all
    assert (await client.get("/healthz", headers={"Host": host})).status == 200


async def upgrade_status(client: TestClient, headers: dict[str, str]) -> int:
    response = await client.get("/", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers})
    status = response.status
    response.close()
    return status


# --- load is an admin operation ----------------------------------------------------------


async def load_with(client: TestClient, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await client.ws_connect("/", headers=headers)
    text, _ = await answer(ws, json.dumps(request(
        "load", {"file_path": str(MANIFESTS / "doubler" / "doubler.yaml")})))
    await ws.close()
    reply: dict[str, Any] = json.loads(text)
    return reply


async def test_load_needs_the_admin_token(serve: Any) -> None:
    client = await serve(auth=AuthSettings(tokens=(CALL_TOKEN,), admin_tokens=(ADMIN_TOKEN,)))
    refused = await load_with(client, CALL_TOKEN)
    assert refused["error"] == {
        "code": -32011, "data": {"path": str(MANIFESTS / "doubler" / "doubler.yaml")},
        "message": "Path not allowed: load is an admin operation: connect with a token from "
                   "auth.admin_tokens"}
    assert (await load_with(client, ADMIN_TOKEN))["result"]["replaced"] is True


async def test_tokens_without_admin_tokens_disable_load(serve: Any) -> None:
    client = await serve(auth=AuthSettings(tokens=(CALL_TOKEN,)))
    assert (await load_with(client, CALL_TOKEN))["error"]["code"] == -32011


async def test_loopback_without_tokens_is_dev_mode(serve: Any) -> None:
    """The README's and the origin's `load` examples work on a default local setup."""
    client = await serve()
    assert (await load_with(client, None))["result"]["success"] is True


async def test_anonymous_on_a_network_address_cannot_load(serve: Any) -> None:
    client = await serve(host="0.0.0.0", auth=AuthSettings(allow_anonymous=True))
    assert (await load_with(client, None))["error"]["code"] == -32011


async def test_network_is_refused_at_load(serve: Any, tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("def process(context):\n    return None\n")
    (tmp_path / "net.yaml").write_text("id: net\nlanguage: python\nscript: net.py\n"
                                       "limits: {network: true}\n")
    client = await serve()
    ws = await client.ws_connect("/")
    frame = json.dumps(request("load", {"file_path": str(tmp_path / "net.yaml")}))
    text, _ = await answer(ws, frame)
    error = json.loads(text)["error"]
    assert error["code"] == -32007
    assert "limits_max.network" in error["message"]


# --- the server's sandbox capacity, counted from outside ---------------------------------


def bwrap_children() -> int:
    """Sandboxes of this test process: its child processes that are bubblewrap."""
    me = str(os.getpid())
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and "(bwrap)" in stat:
            count += 1
    return count


async def test_warm_pools_stop_at_the_servers_memory(tmp_path: Path) -> None:
    """Two actors with min_warm 3 x 128 MiB on a server with 512 MiB: 4 sandboxes, not 6.
    A call of a third actor then takes an idle one rather than fail."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.py").write_text("def process(context):\n    return 1\n")
        warm = "pool: {min_warm: 3}\n" if name != "c" else ""
        (tmp_path / f"{name}.yaml").write_text(
            f"id: {name}\nlanguage: python\nscript: {name}.py\nlimits: {{memory_mb: 128}}\n"
            + warm)
    settings = Settings(manifest_paths=(tmp_path,), allowed_roots=(tmp_path,), backend="process",
                        capacity=CapacitySettings(max_sandboxes=100, memory_mb=512))
    rt = Runtime(settings, ProcessBackend(settings))
    await rt.start()
    try:
        async with asyncio.timeout(60):
            while sum(idle for _, idle, _ in rt.pool_stats().values()) < 4:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # any fifth boot would have started by now
        assert bwrap_children() == 4
        assert (await rt.process("c", {}))["return"] == 1
        assert bwrap_children() <= 4
    finally:
        await rt.aclose()


# --- sockets and descriptors: a real server process --------------------------------------


async def test_one_frame_of_discover_requests_costs_little(tmp_path: Path) -> None:
    """A 1 MiB frame of rpc.discover requests made a 173 MB answer and +730 MiB RSS."""
    with live_server(tmp_path, {}) as server:
        before = server.peak_rss_kb()
        one = json.dumps(request("rpc.discover"))
        frame = "[" + ",".join([one] * (1_000_000 // (len(one) + 1))) + "]"
        async with aiohttp.ClientSession() as session, session.ws_connect(
                server.url, max_msg_size=0) as ws:
            text, _ = await answer(ws, frame)
        assert len(text) < 200 and json.loads(text)["error"]["code"] == -32600
        grown_mb = (server.peak_rss_kb() - before) / 1024
        print(f"peak RSS grew {grown_mb:.1f} MiB")
        assert grown_mb < 64


def test_a_client_that_does_not_read_cannot_grow_the_server(tmp_path: Path) -> None:
    """25,000 small rpc.discover frames, never reading the answers (~12 KB each), took the
    server from 69 to 315 MB: every frame was read, and its answer waited to be written."""
    with live_server(tmp_path, {}) as server:
        before = server.peak_rss_kb()
        with stuck_client(server.port) as sent:
            time.sleep(1.5)  # (the frames fit in the socket buffers: the server reads them)
            status, seconds = server.healthz()
            grown_mb = (server.peak_rss_kb() - before) / 1024
        print(f"{sent} frames sent; peak RSS grew {grown_mb:.1f} MiB; healthz {status} in "
              f"{seconds * 1000:.0f} ms")
        assert grown_mb < 40 and status == 200


@contextlib.contextmanager
def stuck_client(port: int) -> Iterator[socket.socket]:
    """A session that sends rpc.discover frames (~12 KB answers) until the server stops
    reading them, and never reads an answer."""
    frame = ws_frame(json.dumps(request("rpc.discover")).encode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 101")
        s.settimeout(2)
        sent = 0
        with contextlib.suppress(TimeoutError):
            while sent < 25_000:  # the answers are never read
                s.sendall(frame)
                sent += 1
        yield s


def read_to_the_end(s: socket.socket, timeout_s: float) -> bool:
    """Read what ``s`` holds: did the server close it (EOF or reset) within ``timeout_s``?"""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if not s.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_a_client_that_takes_no_answer_is_cut_off(tmp_path: Path) -> None:
    """A client that never read held its answers, and their calls' places, for as long as
    it stayed connected (an hour, a day): now for connections.write_timeout_s."""
    with live_server(tmp_path, {"write_timeout_s": 1}) as server, \
            stuck_client(server.port) as s:
        time.sleep(3.5)  # the timeout, and the once-a-second check, with room
        assert "did not take an answer in 1 s" in server.log_text()
        assert read_to_the_end(s, 10)  # what was sent already, then the end


def test_a_client_that_reads_more_slowly_than_its_answers_come_is_cut_off(
        tmp_path: Path) -> None:
    """A client that took 64 KiB every half second was never cut: each write finished (its
    drain) within the timeout, while the answers queued behind it waited ever longer, and
    calls blocked on their notifications held the actor's sandboxes."""
    with live_server(tmp_path, {"write_timeout_s": 2}) as server, \
            stuck_client(server.port) as s:
        deadline = time.monotonic() + 20
        cut = False
        while not cut and time.monotonic() < deadline:
            s.settimeout(1)
            try:
                cut = not s.recv(65536)
            except ConnectionResetError:
                cut = True
            except TimeoutError:
                pass
            time.sleep(0.5)
        assert cut and "did not take an answer in 2 s" in server.log_text()


def test_a_client_that_does_not_read_cannot_hold_up_a_shutdown(tmp_path: Path) -> None:
    """SIGTERM drained, then closed the sessions one after the other, each waiting for its
    close frame to be written: a client that did not read kept the server up (40 s+) until
    a second signal."""
    with live_server(tmp_path, {"write_timeout_s": 600}, top={"shutdown_grace_s": 1}) as server:
        with stuck_client(server.port):
            started = time.monotonic()
            server.process.terminate()
            server.process.wait(timeout=20)
            took = time.monotonic() - started
        print(f"stopped in {took:.1f} s")
        assert server.process.returncode == 0 and took < 8  # grace 1 s + close frame 2 s


def test_idle_sessions_cannot_lock_out_the_health_probe(tmp_path: Path) -> None:
    """Sessions that never close took every connection slot, and /healthz got none."""
    with live_server(tmp_path, {"max_connections": 8, "header_timeout_s": 30}) as server:
        assert asyncio.run(_sessions(server.url, 7, healthz=server.healthz)) == 7


def ws_frame(payload: bytes) -> bytes:
    """One masked WebSocket text frame, as a client sends it (mask 0: the bytes as they are)."""
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return head + b"\0\0\0\0" + payload


def test_idle_and_incomplete_connections_are_closed(tmp_path: Path) -> None:
    """1,100 incomplete request heads stayed open 300 s+ and exhausted the descriptors."""
    connections = {"max_connections": 16, "header_timeout_s": 1}
    with live_server(tmp_path, connections) as server:
        held = open_idle(server.port, 40)
        try:
            assert all(closed_by_server(s, 30) for s in held)
        finally:
            for s in held:
                s.close()
        status, seconds = server.healthz()
        print(f"healthz after the attack: {status} in {seconds * 1000:.0f} ms")
        assert status == 200
        assert dribbler_is_closed(server.port)
        assert kept_alive_idle_is_closed(server.port)
        log = server.log_text()
    assert log.count("connection refused") <= 2, log  # rate-limited: once per 10 s


def test_connections_that_open_no_session_cannot_lock_sessions_out(tmp_path: Path) -> None:
    """Six tokenless connections, each a kept-alive GET /healthz every few seconds, held all
    six slots: a client with a token was refused for as long as they kept at it."""
    with live_server(tmp_path, {"max_connections": 6, "header_timeout_s": 30}) as server:
        held = open_idle(server.port, 6, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            for s in held:
                s.settimeout(10)
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert asyncio.run(_sessions(server.url, 5)) == 5  # one slot is kept from them
            assert all(closed_by_server(s, 10) for s in held)
        finally:
            for s in held:
                s.close()
        log = server.log_text()
    assert "closing the oldest idle connection" in log


async def _sessions(url: str, count: int,
                    healthz: Callable[[], tuple[int, float]] | None = None) -> int:
    """Open ``count`` sessions, each answering a `list`; with all of them open, one more
    session is refused (HTTP 503: every session slot is taken) and ``healthz`` (run in a
    thread, it blocks) answers 200. How many answered."""
    answered = 0
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(count)]
        for ws in sockets:
            await ws.send_str(json.dumps(request("list")))
            answered += "result" in json.loads((await ws.receive(timeout=10)).data)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 503
        if healthz is not None:
            for _ in range(3):
                assert (await asyncio.to_thread(healthz))[0] == 200
        for ws in sockets:
            await ws.close()
    return answered


def dribbler_is_closed(port: int) -> bool:
    """Bytes that keep coming, but never a whole request head, do not keep it open."""
    (s,) = open_idle(port, 1, b"GET / HTTP/1.1\r\n")
    with s:
        for i in range(30):
            try:
                s.sendall(f"X-{i}: y\r\n".encode())
            except OSError:
                return True
            time.sleep(0.2)
        return closed_by_server(s, 10)


def kept_alive_idle_is_closed(port: int) -> bool:
    """After one answered request, an idle keep-alive connection has as long again."""
    (s,) = open_idle(port, 1, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    with s:
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        return closed_by_server(s, 30)


def test_running_out_of_descriptors_logs_once_not_megabytes(tmp_path: Path) -> None:
    """At EMFILE, asyncio logged every failed accept(): 4 MB/s of log."""
    with live_server(tmp_path, {"max_connections": 1000, "header_timeout_s": 30},
                     nofile=128) as server:
        held = []
        try:
            for _ in range(250):
                try:
                    held += open_idle(server.port, 1)
                except OSError:
                    break
            time.sleep(3)
            log = server.log_text()
        finally:
            for s in held:
                s.close()
        time.sleep(1.5)  # the loop retries accept() once a second
        assert server.healthz()[0] == 200
    assert log.count("out of system resource") <= 2, log[-2000:]
    assert len(log) < 20_000, len(log)
