"""Protocol fuzz against the live server (real runtime, process sandbox).

Every frame is judged by ``fuzz_oracle`` (written from shared/spec/protocol.md): a
notification gets nothing, a request exactly one answer with its id, an error code the
spec allows for that method and that input, -32603 never, and no traceback or planted
secret anywhere. Every 25 frames, and at the end, the server must still answer `list`
and GET /healthz.

    .venv/bin/python -m pytest tests/fuzz -q                  # CI: under a minute
    FUZZ_SCALE=10 .venv/bin/python -m pytest tests/fuzz -q --timeout 0     # a longer hunt
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fuzz_oracle import World
from fuzz_strategies import (
    JSON,
    STYLES,
    VALID_IDS,
    broken_utf8,
    cancel_params,
    describe_params,
    encode,
    frames,
    load_params,
    mangled,
    messages,
    no_params,
    process_params,
    requests,
)
from fuzz_wire import RawWebSocket, Wire
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FUZZ_SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
CLOSE_CODES = {1000, 1002, 1003, 1007, 1009}  # normal (after a client close), protocol errors


def fuzz(max_examples: int) -> settings:
    """Bounded hypothesis settings; the server fixture is shared by the examples on purpose."""
    return settings(max_examples=max(1, int(max_examples * FUZZ_SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- JSON and JSON-RPC shapes ------------------------------------------------------------


@fuzz(200)
@given(value=JSON, style=STYLES)
async def test_random_json_values(wire: Wire, value: Any, style: str) -> None:
    await wire.exchange(encode(value, style))


@fuzz(300)
@given(frame=frames(messages()))
@example(frame='{"jsonrpc":"2.0","method":"list","id":1e400}')
@example(frame='{"jsonrpc":"2.0","method":"process","id":1,'
               '"params":{"actor_id":"doubler","payload":{"input":1e400}}}')
@example(frame='{"jsonrpc":"2.0","method":"list","id":' + "9" * 5000 + "}")
@example(frame='{"jsonrpc":"2.0","method":"list","id":"\\ud800"}')
@example(frame='{"jsonrpc":"2.0","method":"list","id":-0.0}')
@example(frame='{"jsonrpc":"2.0","method":"list","id":1,"id":"two"}')
async def test_random_messages(wire: Wire, frame: str | bytes) -> None:
    await wire.exchange(frame)


# --- every method's params ---------------------------------------------------------------


@fuzz(150)
@given(frame=frames(requests("list", no_params()) | requests("rpc.discover", no_params())))
async def test_list_and_discover_params(wire: Wire, frame: str | bytes) -> None:
    await wire.exchange(frame)


@fuzz(150)
@given(frame=frames(requests("describe", describe_params())))
async def test_describe_params(wire: Wire, frame: str | bytes) -> None:
    await wire.exchange(frame)


@fuzz(150)
@given(frame=frames(requests("cancel", cancel_params())))
async def test_cancel_params(wire: Wire, frame: str | bytes) -> None:
    await wire.exchange(frame)


@fuzz(250)
@given(frame=frames(requests("process", process_params())))
@example(frame='{"jsonrpc":"2.0","method":"process","id":"j",'
               '"params":{"actor_id":"doubler_js","payload":{"input":3},'
               '"state":{"__proto__":{"polluted":true},"constructor":1}}}')
@example(frame='{"jsonrpc":"2.0","method":"process","id":[],"params":{}}')
async def test_process_params(wire: Wire, frame: str | bytes) -> None:
    await wire.exchange(frame)


@fuzz(250)
@given(data=st.data())
async def test_load_params(wire: Wire, world: World, outside: Path, data: st.DataObject) -> None:
    request = data.draw(requests("load", load_params(world.root, outside)), label="request")
    await wire.exchange(data.draw(STYLES.map(lambda style: encode(request, style))))


# --- batches -----------------------------------------------------------------------------


@st.composite
def call_and_cancel(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A ticker call and a cancel of it, in either order (the cancel may come too late)."""
    call_id = draw(VALID_IDS)
    count = draw(st.integers(0, 30))
    call = {"jsonrpc": "2.0", "method": "process", "id": call_id,
            "params": {"actor_id": "ticker", "payload": {"count": count}}}
    cancel = {"jsonrpc": "2.0", "method": "cancel", "id": draw(VALID_IDS),
              "params": {"request_id": call_id}}
    return draw(st.permutations([call, cancel]))


ELEMENTS = (messages() | requests("process", process_params()) | requests("describe",
            describe_params()) | requests("cancel", cancel_params()) | JSON)
BATCHES = st.builds(lambda pairs, rest: [*pairs, *rest], st.just([]) | call_and_cancel(),
                    st.lists(ELEMENTS, max_size=6)).filter(bool)


@fuzz(150)
@given(batch=BATCHES, style=STYLES)
@example(batch=[{"jsonrpc": "2.0", "method": "list"}], style="compact")
@example(batch=[[]], style="compact")
async def test_batches(wire: Wire, batch: list[Any], style: str) -> None:
    await wire.exchange(encode(batch, style))


# --- text and binary frames --------------------------------------------------------------


@fuzz(300)
@given(frame=st.text(max_size=300) | mangled())
@example(frame="")
@example(frame="[" * 100_000)
@example(frame='{"a":' * 5000 + "1" + "}" * 5000)
async def test_random_text_frames(wire: Wire, frame: str) -> None:
    await wire.exchange(frame)


@fuzz(300)
@given(frame=st.binary(max_size=300) | broken_utf8() | frames(messages()).map(
    lambda f: f.encode("utf-8", "surrogatepass") if isinstance(f, str) else f))
@example(frame=b"\xef\xbb\xbf" + b'{"jsonrpc":"2.0","method":"list","id":1}')
@example(frame='{"jsonrpc":"2.0","method":"list","id":1}'.encode("utf-16"))
async def test_random_binary_frames(wire: Wire, frame: bytes) -> None:
    await wire.exchange(frame)


RAW_FRAMES = st.lists(st.tuples(
    st.sampled_from([0x0, 0x1, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB, 0xF]),  # opcode
    st.booleans(),  # FIN
    st.sampled_from([0, 0, 0, 1, 4]),  # RSV bits (no extension was negotiated)
    st.sampled_from([True, True, True, False]),  # masked
    st.binary(max_size=140) | broken_utf8() | frames(messages()).map(
        lambda f: f if isinstance(f, bytes) else f.encode()),
), min_size=1, max_size=3)


@fuzz(100)
@given(raw_frames=RAW_FRAMES)
async def test_raw_websocket_frames(fuzz_client: TestClient,
                                    raw_frames: list[tuple[int, bool, int, bool, bytes]]) -> None:
    """Any frames, then a request: the server answers it or closes with a protocol code."""
    raw = await RawWebSocket.connect(*_address(fuzz_client))
    try:
        for opcode, fin, rsv, masked, payload in raw_frames:
            raw.send_frame(payload, opcode, fin=fin, rsv=rsv, masked=masked)
        raw.send_frame(b'{"jsonrpc":"2.0","method":"list","id":"raw-sentinel"}', 0x1)
        await _answered_or_closed(raw, sent_close=any(f[0] == 0x8 for f in raw_frames))
    finally:
        await raw.close()
    response = await fuzz_client.get("/healthz")
    assert response.status == 200


def _address(client: TestClient) -> tuple[str, int]:
    assert client.port is not None  # the test server is started
    return client.host, client.port


async def _answered_or_closed(raw: RawWebSocket, sent_close: bool) -> None:
    while (frame := await raw.read_frame()) is not None:
        opcode, payload = frame
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            assert code in CLOSE_CODES or (sent_close and code is None), (code, payload)
            return
        assert opcode in (0x1, 0x9, 0xA), f"server sent opcode {opcode:#x}"
        if opcode == 0x1:
            text = payload.decode("utf-8")
            assert "Traceback" not in text and 'File "' not in text, text
            message = json.loads(text)
            if isinstance(message, dict) and message.get("id") == "raw-sentinel":
                assert "result" in message, message
                return
    # end of stream without a close frame: allowed when failing a connection (RFC 6455 7.1.7)


# --- findings, pinned --------------------------------------------------------------------


async def test_number_beyond_double_range_is_a_parse_error(wire: Wire) -> None:
    """Was: no answer at all (the id 1e400 became inf, which cannot be encoded back)."""
    await wire.ws.send_str('{"jsonrpc":"2.0","method":"list","id":1e400}')
    assert json.loads((await wire.ws.receive(timeout=10)).data) == {
        "jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
    await wire.exchange('{"jsonrpc":"2.0","method":"describe","id":7,'
                        '"params":{"actor_id":"doubler","x":-1e999}}')


async def test_invalid_utf8_text_frame_closes_with_1007(fuzz_client: TestClient) -> None:
    """RFC 6455 8.1: a text frame that is not UTF-8 fails the connection (1007), only it."""
    raw = await RawWebSocket.connect(*_address(fuzz_client))
    try:
        raw.send_frame(b'{"jsonrpc":"2.0","method":"list","id":"\xff"}', 0x1)
        frame = await raw.read_frame()
    finally:
        await raw.close()
    assert frame is not None and frame[0] == 0x8, frame
    assert int.from_bytes(frame[1][:2], "big") == 1007
    ws = await fuzz_client.ws_connect("/")
    await ws.send_str('{"jsonrpc":"2.0","method":"cancel","params":[1],"id":1}')
    assert json.loads((await ws.receive(timeout=10)).data)["result"] == {"cancelled": False}
    await ws.close()


async def test_ref_outside_the_root_is_refused(wire: Wire) -> None:
    path = wire.world.root / "known_bugs" / "ref_out.yaml"
    await wire.exchange(json.dumps({"jsonrpc": "2.0", "method": "load", "id": 1,
                                    "params": {"file_path": str(path)}}))


@pytest.mark.parametrize("name", ["a\x00.yaml", "x" * 300 + "/../fuzz_doubler.py"])
async def test_unusable_load_path_is_not_found(wire: Wire, name: str) -> None:
    path = f"{wire.world.root}/good/{name}"
    await wire.exchange(json.dumps({"jsonrpc": "2.0", "method": "load", "id": 1,
                                    "params": {"file_path": path}}))


@pytest.mark.parametrize("actor_id", ["doubler", "doubler_js"])
async def test_lone_surrogate_in_state(wire: Wire, actor_id: str) -> None:
    await wire.exchange('{"jsonrpc":"2.0","method":"process","id":1,"params":{"actor_id":"'
                        + actor_id + '","payload":{"input":1},"state":{"k":"\\ud800"}}}')
