"""service.jsonfast against the standard library: the same values, or the reference decides."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import jsonfast
from service.rpc.core import Connection, Dispatcher
from service.sandbox.base import decode_line, encode_line

TEXT = st.text(max_size=12) | st.sampled_from(
    ["", "null", "\ud800", "a\udfff", "\x7f", "\x1f", "é", "\u2028", "0" * 25, "[{"])
INTS = st.integers() | st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)])
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 5e-324, 1e16, 1e22, 6.7e-05, 1e-7, 1.7976931348623157e308])
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=16)
PIECES = st.sampled_from(['{', '}', '[', ']', ',', ':', '"a"', '"\\ud800"', '"\\u00e9"', '1',
                          '-0', '1.5', '1e400', '-1e400', '1E5', '12345678901234567890',
                          'NaN', 'Infinity', 'true', 'null', ' ', '\n', '\x0c', '\ufeff',
                          '"\x01"', '01', '.5', '1.', '"\\x"', "'a'"])


def typed(value: Any) -> Any:
    """``value`` with every number's type (and a float's exact bits) made part of it."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, list):
        return [typed(v) for v in value]
    return [(k, typed(v)) for k, v in value.items()]


def outcome(parse: Any, text: str | bytes) -> Any:
    try:
        return ("ok", typed(parse(text)))
    except (ValueError, RecursionError):
        return ("error",)


@settings(max_examples=400, deadline=None)
@given(JSON, st.booleans())
def test_loads_reads_what_json_reads(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert outcome(jsonfast.loads, text) == outcome(json.loads, text)
    data = text.encode("utf-8", "surrogatepass")
    assert outcome(jsonfast.loads, data) == outcome(json.loads, data)


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, max_size=12))
def test_loads_accepts_and_refuses_what_json_does(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert outcome(jsonfast.loads, text) == outcome(json.loads, text)


@pytest.mark.parametrize("text", [
    "123456789012345678901234567890", "-9223372036854775809", "18446744073709551616",
    '"\\ud800"', "NaN", "-Infinity", "1e400", "[" * 600 + "]" * 600, "\ufeff1",
    "[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, '"\ud800"',
])
def test_where_orjson_differs_the_reference_decides(text: str) -> None:
    assert outcome(jsonfast.loads, text) == outcome(json.loads, text)


def test_the_reference_gets_its_hooks() -> None:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    strict = json.JSONDecoder(parse_constant=refuse).decode
    with pytest.raises(ValueError, match="NaN"):
        jsonfast.loads('{"a": NaN}', strict)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_dumps_ascii_writes_the_value_json_writes(value: Any) -> None:
    fast = jsonfast.dumps_ascii(value)
    try:
        reference = json.dumps(value, separators=(",", ":"))
    except ValueError:  # e.g. an int of more digits than int() converts
        assert fast is None
        return
    if fast is not None:
        assert fast.isascii()
        assert typed(json.loads(fast)) == typed(json.loads(reference))


@dataclasses.dataclass
class Point:
    x: int


class Name(str):
    pass


@pytest.mark.parametrize("value", [
    math.nan, math.inf, [-math.inf], 2**64, -(2**63) - 1, "\ud800", "é", None, {"a": None},
    {1: 2}, datetime.date(2026, 1, 1), Point(1), Name("x"), json.loads("[" * 300 + "]" * 300),
])
def test_dumps_ascii_leaves_to_json_what_orjson_writes_otherwise(value: Any) -> None:
    assert jsonfast.dumps_ascii(value) is None


def test_harness_lines_keep_their_meaning() -> None:
    message = {"type": "call", "payload": {"x": [1, 2.5, "é", None, 2**70, "\ud800"]}}
    line = encode_line(message)
    assert line.endswith(b"\n") and line.isascii()
    assert typed(json.loads(line)) == typed(message)
    assert decode_line(b'{"n":123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890}
    with pytest.raises(ValueError):
        decode_line(b"[" * 100_000)


async def test_frames_keep_their_numbers_and_refusals() -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    dispatcher, connection = Dispatcher(), Connection(send)
    big = '{"jsonrpc":"2.0","method":"nope","id":123456789012345678901234567890}'
    assert json.loads(await dispatcher.handle_frame(big, connection) or "")["id"] == \
        123456789012345678901234567890
    for frame in ('{"jsonrpc":"2.0","method":"nope","id":1e400}',
                  '{"jsonrpc":"2.0","method":"nope","id":NaN}'):
        assert json.loads(await dispatcher.handle_frame(frame, connection) or "")["error"][
            "code"] == -32700


@pytest.mark.parametrize("line", [
    b'{"type":"output","port":"output","data":NaN}', b'{"data":Infinity}', b'[-Infinity]',
    b'{"data":1e400}', b'{"data":-1E309}', b'[1.5e99999]',
    # the reference's paths: a long digit run, more brackets than orjson is given
    b'{"n":123456789012345678901234567890,"data":NaN}', b'[1e400,"1234567890123456789012"]',
    b"[" * 600 + b"1e400" + b"]" * 600, b"[" * 600 + b"NaN" + b"]" * 600,
])
def test_harness_lines_refuse_non_finite_numbers(line: bytes) -> None:
    """No harness writes them and the wire cannot carry them: not JSON for this protocol."""
    with pytest.raises(ValueError):
        decode_line(line)
    with pytest.raises(ValueError):
        decode_line(line.decode())


@pytest.mark.parametrize(("line", "value"), [
    (b'[1.7976931348623157e308,-1.7976931348623157e308]', [1.7976931348623157e308,
                                                           -1.7976931348623157e308]),
    (b'[1e-400, -0.0, 5e-324]', [0.0, -0.0, 5e-324]),  # underflow is a finite number
    (b'{"n":' + b"9" * 400 + b"}", {"n": int("9" * 400)}),  # an integer is exact: kept
    (b'{"s":"NaN Infinity 1e400"}', {"s": "NaN Infinity 1e400"}),
])
def test_harness_lines_keep_finite_numbers(line: bytes, value: Any) -> None:
    assert typed(decode_line(line)) == typed(value)
    deep = decode_line(b"[" * 520 + b"1.5" + b"]" * 520)  # read by the reference
    for _ in range(520):
        (deep,) = deep
    assert deep == 1.5


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, max_size=12))
def test_harness_lines_are_read_as_the_strict_reference_reads_them(pieces: list[str]) -> None:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    def finite(text: str) -> float:
        if not math.isfinite(value := float(text)):
            raise ValueError(text)
        return value

    text = "".join(pieces)
    reference = functools.partial(json.loads, parse_constant=refuse, parse_float=finite)
    assert outcome(decode_line, text) == outcome(reference, text)


@pytest.mark.parametrize("text", [
    "[" + ",".join(["[[]]"] * 60_000) + "]",  # orjson's
    "[" + ",".join(["[[]]"] * 60_000) + ",1e400]",  # the reference's, which refuses it
])
def test_a_long_text_is_decoded_with_no_collection(text: str) -> None:
    """Its 120,000 new containers would set off collections (a JSON value has no cycle for
    them to find); the collector is on again afterwards, whatever the outcome."""
    collections: list[str] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(phase)

    gc.callbacks.append(count)
    try:
        with contextlib.suppress(ValueError):
            jsonfast.loads(text, jsonfast.strict_loads)
    finally:
        gc.callbacks.remove(count)
    assert collections == [] and gc.isenabled()


def test_weight_counts_values_long_strings_and_big_integers() -> None:
    """What writing a value costs, roughly, counted no further than asked."""
    assert jsonfast.weight([1, True, None, 2.5, "ab"], 100) == 6
    assert jsonfast.weight({"k": [1, 2]}, 100) == 5  # the object, its key, the list, 2 items
    assert jsonfast.weight("x" * 1024, 100) == 1 + 1024 // jsonfast.CHARS_PER_VALUE
    big = int("7" * 4000)  # ~0.2 ms to write out: as much as ~200 small values
    assert jsonfast.weight(big, 10**6) == 1 + big.bit_length() // jsonfast.BITS_PER_VALUE
    assert jsonfast.weight([[0] * 10_000] * 10_000, 50) == 50  # stops at its bound


@pytest.mark.parametrize("value", [
    [[]] * 20_000, [{}] * 20_000, [{"a": 1}] * 20_000, {f"k{i}": [i] for i in range(20_000)},
    [i + 0.5 for i in range(20_000)], [1000 + i for i in range(20_000)], ["ab"] * 20_000,
    [[[[i]]] for i in range(5_000)], ["x" * 1000] * 100, [True, None] * 10_000, {"a": "é"},
    "x" * 100_000, 1.5, [],
])
def test_decoded_size_is_at_least_what_the_value_takes(value: Any) -> None:
    """What a frame or an output line holds once decoded (the request memory, OutputBudget),
    against tracemalloc: at least as much, and not past 10x."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    tracemalloc.start()
    try:
        decoded = jsonfast.loads(text)
        taken, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == value
    assert taken <= jsonfast.decoded_size(text) == jsonfast.decoded_size(text.encode())
    assert jsonfast.decoded_size(text) <= 10 * max(taken, 100)


def test_decoded_size_counts_every_container_and_item() -> None:
    assert jsonfast.decoded_size(b"1") == 1 + jsonfast.ITEM_BYTES
    assert jsonfast.decoded_size(b'[{},{"a":1}]') == 12 + 3 * jsonfast.CONTAINER_BYTES \
        + 3 * jsonfast.ITEM_BYTES  # a comma, a colon, and one
    assert jsonfast.decoded_size(b'"a,b"') == 5 + 2 * jsonfast.ITEM_BYTES  # in a string too
