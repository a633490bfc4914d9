"""The transport-free JSON-RPC core, against the JSON-RPC 2.0 specification's own examples."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import jsonfast
from service.errors import ActorNotFound
from service.eventloop import HEAVY_FRAME
from service.rpc import core
from service.rpc.core import Call, Connection, Dispatcher, Encoded, encode, plain
from service.sandbox import base
from service.sandbox.base import CallRequest
from service.settings import ConnectionSettings


def _schema(*names: str, required: int | None = None, types: str = "number") -> dict[str, Any]:
    needed = names if required is None else names[:required]
    return {"type": "object", "properties": {n: {"type": types} for n in names},
            "required": list(needed), "additionalProperties": False}


class Recorder:
    """A connection that records what it sent, and a log of the handlers' side effects."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.connection = Connection(self._send)

    async def _send(self, text: str) -> None:
        self.sent.append(json.loads(text))


@pytest.fixture
def effects() -> list[Any]:
    return []


@pytest.fixture
def dispatcher(effects: list[Any]) -> Dispatcher:
    d = Dispatcher()

    async def subtract(p: dict[str, Any], call: Call) -> Any:
        return p["minuend"] - p["subtrahend"]

    async def total(p: dict[str, Any], call: Call) -> Any:
        return sum(p.values())

    async def record(p: dict[str, Any], call: Call) -> Any:
        effects.append((call.method, p))
        return None

    async def get_data(p: dict[str, Any], call: Call) -> Any:
        return ["hello", 5]

    async def boom(p: dict[str, Any], call: Call) -> Any:
        effects.append("boom ran")
        raise RuntimeError("secret internals /etc/passwd")

    async def not_found(p: dict[str, Any], call: Call) -> Any:
        raise ActorNotFound("ghost")

    async def chatty(p: dict[str, Any], call: Call) -> Any:
        await call.notify("output", {"request_id": call.id, "n": 1})
        await call.notify("output", {"request_id": call.id, "n": 2})
        return "done"

    async def echo_id(p: dict[str, Any], call: Call) -> Any:
        return {"id": call.id, "is_notification": call.is_notification}

    d.register("subtract", subtract, _schema("minuend", "subtrahend"))
    d.register("sum", total, _schema("a", "b", "c"))
    d.register("update", record, _schema("a", "b", "c", "d", "e", required=0))
    d.register("notify_hello", record, _schema("n"))
    d.register("notify_sum", record, _schema("a", "b", "c"))
    d.register("get_data", get_data, _schema())
    d.register("boom", boom, _schema())
    d.register("not_found", not_found, _schema())
    d.register("chatty", chatty, _schema())
    d.register("echo_id", echo_id, _schema())
    return d


async def _send(d: Dispatcher, frame: str | bytes, rec: Recorder | None = None) -> Any:
    response = await d.handle_frame(frame, (rec or Recorder()).connection)
    return None if response is None else json.loads(response)


# --- the specification's examples (https://www.jsonrpc.org/specification#examples) ---


@pytest.mark.parametrize(("frame", "expected"), [
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
     '"id": 3}', {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
     '"id": 4}', {"jsonrpc": "2.0", "result": 19, "id": 4}),
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
     '{"jsonrpc": "2.0", "method"]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ("[]", {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ("[1]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
              "id": None}]),
    ("[1,2,3]", [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
                  "id": None}] * 3),
])
async def test_specification_examples(dispatcher: Dispatcher, frame: str, expected: Any) -> None:
    assert await _send(dispatcher, frame) == expected


async def test_spec_mixed_batch(dispatcher: Dispatcher, effects: list[Any]) -> None:
    frame = json.dumps([
        {"jsonrpc": "2.0", "method": "sum", "params": [1, 2, 4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"},
    ])
    assert await _send(dispatcher, frame) == [
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
    ]
    assert effects == [("notify_hello", {"n": 7})]  # the notification ran, unanswered


async def test_spec_notifications_get_nothing_back(dispatcher: Dispatcher,
                                                   effects: list[Any]) -> None:
    assert await _send(dispatcher, '{"jsonrpc": "2.0", "method": "update", '
                                   '"params": [1,2,3,4,5]}') is None
    assert await _send(dispatcher, '{"jsonrpc": "2.0", "method": "foobar"}') is None
    batch = ('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
             '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]')
    assert await dispatcher.handle_frame(batch, Recorder().connection) is None
    assert effects == [("update", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}),
                       ("notify_sum", {"a": 1, "b": 2, "c": 4}),
                       ("notify_hello", {"n": 7})]


# --- ids ---


@pytest.mark.parametrize("request_id", ["abc", "", 7, 0, -3, 7.5, 1e300, None, 2**70])
async def test_ids_are_echoed_with_their_type(dispatcher: Dispatcher, request_id: Any) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "method": "echo_id", "id": request_id})
    response = await dispatcher.handle_frame(frame, Recorder().connection)
    assert response is not None
    decoded = json.loads(response)
    assert decoded == {"jsonrpc": "2.0", "result": {"id": request_id, "is_notification": False},
                       "id": request_id}
    assert type(decoded["id"]) is type(request_id)


async def test_float_id_keeps_its_spelling(dispatcher: Dispatcher) -> None:
    response = await dispatcher.handle_frame('{"jsonrpc":"2.0","method":"get_data","id":1.0}',
                                             Recorder().connection)
    assert response == '{"jsonrpc":"2.0","result":["hello",5],"id":1.0}'


@pytest.mark.parametrize("bad_id", ["true", "false", "{}", '{"a": 1}', "[1]"])
async def test_bool_object_array_ids_are_invalid(dispatcher: Dispatcher, bad_id: str) -> None:
    frame = f'{{"jsonrpc": "2.0", "method": "get_data", "id": {bad_id}}}'
    assert await _send(dispatcher, frame) == {
        "jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}


# --- request shape ---


@pytest.mark.parametrize("message", [
    {"method": "get_data", "id": 1},                                 # no jsonrpc
    {"jsonrpc": "1.0", "method": "get_data", "id": 1},
    {"jsonrpc": 2.0, "method": "get_data", "id": 1},
    {"jsonrpc": "2.0", "id": 1},                                     # no method
    {"jsonrpc": "2.0", "method": None, "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": "x", "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": None, "id": 1},
    {"jsonrpc": "2.0", "method": "get_data", "params": 3, "id": 1},
])
async def test_invalid_requests_with_a_readable_id_echo_it(dispatcher: Dispatcher,
                                                           message: dict[str, Any]) -> None:
    assert await _send(dispatcher, json.dumps(message)) == {
        "jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": 1}


@pytest.mark.parametrize("frame", ["1", '"x"', "null", "true"])
async def test_a_scalar_is_an_invalid_request(dispatcher: Dispatcher, frame: str) -> None:
    assert await _send(dispatcher, frame) == {
        "jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}


@pytest.mark.parametrize("frame", [
    b'{"jsonrpc": "2.0", "method": "get_data", "id": 1, "x": "\xff"}',   # not UTF-8
    '{"jsonrpc": "2.0", "method": "sum", "params": [NaN, 1, 2], "id": 1}',
    '{"jsonrpc": "2.0", "method": "sum", "params": [Infinity, 1, 2], "id": 1}',
    '{"jsonrpc": "2.0", "method": "sum", "params": [1e400], "id": 1}',  # JSON, beyond a double
    '{"jsonrpc": "2.0", "method": "sum", "params": [' + "9" * 4301 + '], "id": 1}',  # > 4300
    "",
    "[" * 100_000,
])
async def test_parse_errors(dispatcher: Dispatcher, frame: str | bytes) -> None:
    assert await _send(dispatcher, frame) == {
        "jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}


@pytest.mark.parametrize("request_id", ["1" * 257, int("9" * 257), -int("9" * 256)])
async def test_an_id_longer_than_max_id_chars_is_refused_whatever_its_type(
        dispatcher: Dispatcher, request_id: Any) -> None:
    """An id is copied into every notification of its call: a number too."""
    frame = json.dumps({"jsonrpc": "2.0", "method": "echo_id", "id": request_id})
    assert await _send(dispatcher, frame) == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "Invalid Request: an id has at most 256 characters"}}


async def test_binary_utf8_frame_is_a_request(dispatcher: Dispatcher) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "method": "echo_id", "id": "é"}).encode()
    assert await _send(dispatcher, frame) == {
        "jsonrpc": "2.0", "result": {"id": "é", "is_notification": False}, "id": "é"}


# --- params ---


@pytest.mark.parametrize(("params", "errors"), [
    ({"minuend": 1}, [{"path": "", "message": "'subtrahend' is a required property"}]),
    ({"minuend": "1", "subtrahend": 2}, [{"path": "/minuend",
                                          "message": "'1' is not of type 'number'"}]),
    ({"minuend": 1, "subtrahend": 2, "x": 3},
     [{"path": "", "message": "Additional properties are not allowed ('x' was unexpected)"}]),
    ([1, 2, 3], [{"path": "", "message": "at most 2 positional params, got 3"}]),
    ([1], [{"path": "", "message": "'subtrahend' is a required property"}]),
])
async def test_invalid_params(dispatcher: Dispatcher, params: Any,
                              errors: list[dict[str, str]]) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "method": "subtract", "params": params, "id": 9})
    assert await _send(dispatcher, frame) == {"jsonrpc": "2.0", "id": 9, "error": {
        "code": -32602, "message": "Invalid params", "data": {"errors": errors}}}


async def test_a_large_wrong_param_is_quoted_by_its_beginning(dispatcher: Dispatcher) -> None:
    """Params are checked on the event loop: a message quoting all of a 1 MiB value (and
    writing it out first) held every other caller."""
    frame = json.dumps({"jsonrpc": "2.0", "method": "subtract", "id": 9,
                        "params": {"minuend": [[]] * 250_000, "subtrahend": 1}})
    [error] = (await _send(dispatcher, frame))["error"]["data"]["errors"]
    assert error == {"path": "/minuend",
                     "message": f"{repr([[]] * 250_000)[:900]}... is not of type 'number'"}


async def test_many_unknown_params_are_counted_not_listed(dispatcher: Dispatcher) -> None:
    """100,000 unknown params: jsonschema found, sorted and quoted each on the event loop."""
    params = {"minuend": 1, "subtrahend": 2, **{f"k{i}": 0 for i in range(100_000)}}
    frame = json.dumps({"jsonrpc": "2.0", "method": "subtract", "params": params, "id": 9})
    [error] = (await _send(dispatcher, frame))["error"]["data"]["errors"]
    assert error == {"path": "", "message": "Additional properties are not allowed (100000 "
                                            "were unexpected, 'k0', 'k1', 'k2' among them)"}


def test_an_encoded_value_is_written_as_its_text() -> None:
    """Spliced, not written again: its text stands wherever the value appears."""
    written = Encoded([1, "x"])
    assert written.text == '[1,"x"]'
    written.text = "[2]"  # what encode() must now write for it, to show it did not re-encode
    lookalike = "\x00" + "0" * 17 + "\x00"  # a placeholder's shape, with no call's nonce
    message = {"a": written, "b": [written, lookalike], "c": 1.5}
    assert encode(message) == '{"a":[2],"b":[[2],' + json.dumps(lookalike) + '],"c":1.5}'
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        encode({"a": written, "b": {1}})


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30), st.randoms())
def test_encoded_values_give_the_text_of_the_plain_message(value: Any, rng: Any) -> None:
    def wrap(item: Any) -> Any:
        if isinstance(item, dict):
            item = {key: wrap(inner) for key, inner in item.items()}
        elif isinstance(item, list):
            item = [wrap(inner) for inner in item]
        return Encoded(item) if rng.random() < 0.3 else item

    wrapped = wrap(value)
    assert encode({"result": wrapped}) == json.dumps(
        {"result": plain(wrapped)}, separators=(",", ":"), allow_nan=False)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(
        st.text(max_size=4) | st.integers() | st.floats() | st.booleans() | st.none(), inner,
        max_size=9), max_leaves=60)


def _written_or_refused(encoder: Any, value: Any) -> Any:
    try:
        return encoder(value)
    except (TypeError, ValueError, RecursionError) as exc:  # NaN, say: refused alike
        return type(exc)


@given(JSON_VALUES)
def test_a_value_written_in_pieces_is_the_text_encode_writes(value: Any) -> None:
    """Byte for byte, refusals included (NaN), with keys of every type JSON turns into text,
    in pieces of 3 values (a string: one more per 4 characters) so that every path is taken."""
    with mock.patch.object(core, "PIECE_VALUES", 3), \
            mock.patch.object(jsonfast, "CHARS_PER_VALUE", 4):
        assert _written_or_refused(core.encode_in_pieces, value) \
            == _written_or_refused(encode, value)


def test_a_value_in_pieces_fails_as_encode_fails() -> None:
    """A cycle, or nesting that a piece's frames run out on: encode's own answer."""
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: Any = list(range(5000))  # heavy: written in pieces, level by level
    for _ in range(900):
        deep = [deep]
    for value in (cycle, deep):
        assert _written_or_refused(core.encode_in_pieces, value) \
            == _written_or_refused(encode, value)
    with pytest.raises(ValueError, match="Circular reference detected"):
        core.encode_in_pieces(cycle)


def test_no_call_of_the_encoder_writes_more_than_a_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call holds the GIL till it returns: 16 MB of schemas in one took ~1 s."""
    sizes: list[int] = []

    def counted(value: Any) -> str:
        sizes.append(_values_in(value))
        return encode(value)

    def _values_in(value: Any) -> int:  # a string: one more per 256 characters
        if isinstance(value, dict):
            return 1 + sum(_values_in(item) for pair in value.items() for item in pair)
        if isinstance(value, list):
            return 1 + sum(_values_in(item) for item in value)
        return 1 + len(value) // 256 if isinstance(value, str) else 1

    monkeypatch.setattr(core, "encode", counted)
    schema = {"enum": [i + 0.5 for i in range(5000)],
              "$defs": {f"d{i}": {"enum": [[j, str(j)] for j in range(300)]} for i in range(30)},
              "long": ["x" * 100_000] * 8}
    assert core.encode_in_pieces(schema) == encode(schema)
    assert max(sizes) <= core.PIECE_VALUES + 1  # a run's values, and the list that holds them


async def test_large_frames_and_batch_elements_take_turns_of_their_own(
        dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each waits for a turn of the loop with no other heavy step in it (eventloop.heavy_turn):
    many that were ready at once ran back to back, /healthz waiting seconds."""
    turns: list[str] = []

    async def turn() -> None:
        turns.append("turn")

    monkeypatch.setattr(core, "heavy_turn", turn)
    small = '{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}'
    assert (await _send(dispatcher, small))["result"] == 19 and turns == []
    padded = small[:-1] + ',"pad":"' + "x" * core.HEAVY_FRAME_CHARS + '"}'
    assert not HEAVY_FRAME.get()
    await dispatcher.handle_frame(padded, Connection(_discard_text))
    assert turns == ["turn"]
    assert HEAVY_FRAME.get()  # its call's line is written in a turn of its own too
    monkeypatch.setattr(base, "heavy_turn", turn)
    request = CallRequest("a", {"x": 1}, {}, {}, 0)
    assert await base.call_line_in_turn(request, "") == base.call_line(request, "")
    assert len(turns) == 2
    answers = await _send(dispatcher, "[" + ",".join([small] * 5) + "]")
    assert [a["result"] for a in answers] == [19] * 5 and len(turns) == 7
    # short, but with more brackets than orjson reads: the slower decoder's
    bracketed = small[:-1] + ',"pad":[' + ",".join(["[]"] * jsonfast.MAX_FAST_BRACKETS) + "]}"
    await dispatcher.handle_frame(bracketed, Connection(_discard_text))
    assert len(bracketed) < core.HEAVY_FRAME_CHARS and len(turns) == 8


async def _discard_text(text: str) -> None:
    return None


async def test_omitted_params_are_an_empty_object(dispatcher: Dispatcher) -> None:
    frame = '{"jsonrpc": "2.0", "method": "subtract", "id": 1}'
    response = await _send(dispatcher, frame)
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"] == [
        {"path": "", "message": "'minuend' is a required property"},
        {"path": "", "message": "'subtrahend' is a required property"}]


# --- errors from handlers ---


async def test_rpc_errors_keep_code_and_data(dispatcher: Dispatcher) -> None:
    assert await _send(dispatcher, '{"jsonrpc":"2.0","method":"not_found","id":1}') == {
        "jsonrpc": "2.0", "id": 1, "error": {
            "code": -32001, "message": "Actor not found: ghost", "data": {"actor_id": "ghost"}}}


async def test_unknown_exception_is_internal_error_without_internals(
        dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="service.rpc.core"):
        response = await _send(dispatcher, '{"jsonrpc":"2.0","method":"boom","id":"b"}')
    assert response == {"jsonrpc": "2.0", "id": "b",
                        "error": {"code": -32603, "message": "Internal error"}}
    [record] = caplog.records
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])


async def test_notification_errors_are_not_answered(dispatcher: Dispatcher,
                                                    effects: list[Any]) -> None:
    rec = Recorder()
    for frame in ('{"jsonrpc":"2.0","method":"boom"}', '{"jsonrpc":"2.0","method":"nope"}',
                  '{"jsonrpc":"2.0","method":"subtract","params":{"x":1}}',
                  '{"jsonrpc":"2.0","method":"not_found"}'):
        assert await dispatcher.handle_frame(frame, rec.connection) is None
    assert effects == ["boom ran"]
    assert rec.sent == []


# --- notifications from handlers, concurrency, registry ---


async def test_handler_notifications_go_out_before_the_response(dispatcher: Dispatcher) -> None:
    rec = Recorder()
    response = await dispatcher.handle_frame('{"jsonrpc":"2.0","method":"chatty","id":5}',
                                             rec.connection)
    assert rec.sent == [
        {"jsonrpc": "2.0", "method": "output", "params": {"request_id": 5, "n": 1}},
        {"jsonrpc": "2.0", "method": "output", "params": {"request_id": 5, "n": 2}},
    ]
    assert response == '{"jsonrpc":"2.0","result":"done","id":5}'


async def test_batch_elements_run_concurrently() -> None:
    d = Dispatcher()
    gate = asyncio.Event()

    async def wait(p: dict[str, Any], call: Call) -> str:
        await gate.wait()  # only the other element of the batch opens it
        return "waited"

    async def open_gate(p: dict[str, Any], call: Call) -> str:
        gate.set()
        return "opened"

    d.register("wait", wait, _schema())
    d.register("open", open_gate, _schema())
    frame = '[{"jsonrpc":"2.0","method":"wait","id":1},{"jsonrpc":"2.0","method":"open","id":2}]'
    response = await asyncio.wait_for(d.handle_frame(frame, Recorder().connection), 5)
    assert json.loads(response or "") == [{"jsonrpc": "2.0", "result": "waited", "id": 1},
                                          {"jsonrpc": "2.0", "result": "opened", "id": 2}]


def test_registry_refuses_duplicates(dispatcher: Dispatcher) -> None:
    async def handler(p: dict[str, Any], call: Call) -> None:
        return None

    with pytest.raises(ValueError, match="'subtract' is already registered"):
        dispatcher.register("subtract", handler, _schema())


async def test_result_validation_turns_a_bad_result_into_internal_error() -> None:
    d = Dispatcher(validate_results=True)

    async def bad(p: dict[str, Any], call: Call) -> Any:
        return {"cancelled": "yes"}

    d.register("bad", bad, _schema(), {"type": "object", "properties": {
        "cancelled": {"type": "boolean"}}})
    assert await _send(d, '{"jsonrpc":"2.0","method":"bad","id":1}') == {
        "jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}}


def test_connection_slots_are_per_connection() -> None:
    a, b = Recorder().connection, Recorder().connection
    assert a.slot(list) is a.slot(list)
    assert a.slot(list) is not b.slot(list)


# --- the memory the frames being answered hold --------------------------------------------


def _held_dispatcher(limit_mb: int) -> tuple[Dispatcher, asyncio.Event]:
    """A dispatcher whose ``hold`` method answers once the event is set."""
    d = Dispatcher(limits=ConnectionSettings(max_request_memory_mb=limit_mb))
    release = asyncio.Event()

    async def hold(p: dict[str, Any], call: Call) -> Any:
        await release.wait()
        return len(p["data"])

    d.register("hold", hold, {"type": "object", "properties": {"data": {}}})
    return d, release


def _frame(request_id: Any, items: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "hold",
                       "params": {"data": [[]] * items}})


BUSY_MEMORY = {"code": -32008, "data": {"retry_after_ms": core.MEMORY_RETRY_MS}}


async def test_frames_past_the_request_memory_are_refused_and_freed() -> None:
    """Frames held while their calls run count against max_request_memory_mb, all
    connections together: one that does not fit is answered -32008 (each request of a
    batch, none for a notification), and what is freed can be taken again."""
    d, release = _held_dispatcher(1)
    a, b = Recorder(), Recorder()
    big = _frame(1, 100_000)  # 300 KB of empty lists: ~13 MB counted, alone over the limit
    first = asyncio.create_task(d.handle_frame(big, a.connection))  # alone: it fits
    await asyncio.sleep(0.01)
    assert d.memory.held == core._frame_size(big)
    small = _frame("s", 10)
    refused = json.loads(await d.handle_frame(small, b.connection) or "")
    assert refused["id"] == "s" and {k: refused["error"][k] for k in BUSY_MEMORY} == BUSY_MEMORY
    assert refused["error"]["message"].startswith("Busy: the requests being answered hold ")
    batch = f'[{_frame(2, 1)}, {_frame(None, 1)}, {{"jsonrpc": "2.0", "method": "hold"}}]'
    assert [r["id"] for r in json.loads(await d.handle_frame(batch, b.connection) or "")] \
        == [2, None]
    assert await d.handle_frame('{"jsonrpc": "2.0", "method": "hold"}', b.connection) is None
    for whole in ("[]", json.dumps([json.loads(small)] * 101)):  # refused whole, as always
        assert json.loads(await d.handle_frame(whole, b.connection) or "")["error"]["code"] \
            == -32600
    cancel = await d.handle_frame('{"jsonrpc": "2.0", "id": 3, "method": "cancel"}',
                                  b.connection)
    assert json.loads(cancel or "")["error"]["code"] == -32601  # `cancel` always gets through
    assert await d.handle_frame(_frame("x" * 300, 1), b.connection) == encode(
        {"jsonrpc": "2.0", "error": {"code": -32008, "message": refused["error"]["message"],
                                     "data": {"retry_after_ms": core.MEMORY_RETRY_MS}},
         "id": None})  # an id past max_id_chars is not echoed
    release.set()
    assert json.loads(await first or "")["result"] == 100_000
    await asyncio.sleep(0.01)  # a heavy frame is freed in a turn of its own
    assert d.memory.held == 0
    assert json.loads(await d.handle_frame(small, b.connection) or "")["result"] == 10


async def test_small_frames_fit_beside_each_other() -> None:
    d, release = _held_dispatcher(1)
    connection = Recorder().connection
    held = [asyncio.create_task(d.handle_frame(_frame(i, 20), connection)) for i in range(50)]
    await asyncio.sleep(0.01)
    release.set()
    assert [json.loads(await task or "")["result"] for task in held] == [20] * 50
    assert d.memory.held == 0


@pytest.mark.parametrize("value", [[[]] * 20_000, {"a": "x" * 100}, [[[[1]]]] * 500])
def test_a_frame_counts_its_text_and_its_value(value: Any) -> None:
    """Short: by its length alone (no pass over it on every call); long: jsonfast's estimate
    of its value, and its text."""
    text = json.dumps({"jsonrpc": "2.0", "method": "m", "params": [value]})
    if len(text) < core.COUNTED_FRAME_CHARS:
        assert core._frame_size(text) == core.FRAME_BYTES_PER_CHAR * len(text) \
            >= len(text) + jsonfast.decoded_size(text) // 2
    else:
        assert core._frame_size(text) == len(text) + jsonfast.decoded_size(text)
