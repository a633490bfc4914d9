"""The Python harness's JSON (through the _json accelerator, without `import json`) says
exactly what json.dumps/json.loads say, errors included."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from typing import Any

import pytest
from sandbox_helpers import load_python_harness

from service.sandbox.process import HARNESS_DIR

harness = load_python_harness("harness_under_test")


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


def reference(value: Any) -> bytes:
    """What the harness wrote before: json.dumps, ensure_ascii only for lone surrogates."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode("ascii") + b"\n"


VALUES = [
    {},
    {"type": "ready"},
    {"a": [1, 2.5, -0.0, 1e300, 10**40, True, False, None, "x"]},
    {"nested": {"deep": [[[{"k": "v"}]]]}, "empty": [], "tuple": (1, 2)},
    {"text": "héllo wörld ✓ 𝄞 \u0000 \n \t \" \\ / \u2028"},
    {"surrogate": "a\ud800b"},  # legal as a JSON escape, not as UTF-8
    {"pair": "\ud83d\ude00"},
    {7: "int key", 2.5: "float key", True: "bool key", None: "null key"},
    {"enum": Color.RED, "str_subclass": Name("n"), Name("key"): 1},
    OrderedDict([("z", 1), ("a", 2)]),
    {"float": 0.1, "small": 5e-324, "neg": -123456789.125},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_encode_is_json_dumps(value: Any) -> None:
    assert harness.encode(value) == reference(value)


def test_a_lone_surrogate_falls_back_to_ascii_escapes() -> None:
    assert harness.encode({"s": "\udfff"}) == b'{"s":"\\udfff"}\n'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_as_json_refuses_them(bad: float) -> None:
    with pytest.raises(ValueError) as expected:
        reference({"v": [bad]})
    with pytest.raises(ValueError) as got:
        harness.encode({"v": [bad]})
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), {"k": {(1, 2): "tuple key"}}],
                         ids=["set", "bytes", "object", "tuple-key"])
def test_non_json_values_raise_the_same_type_error(bad: Any) -> None:
    with pytest.raises(TypeError) as expected:
        reference({"v": bad})
    with pytest.raises(TypeError) as got:
        harness.encode({"v": bad})
    assert str(got.value) == str(expected.value)


def test_a_cycle_is_a_value_error_and_the_encoder_stays_usable() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        harness.encode({"v": cycle})
    shared = [1]
    assert harness.encode({"a": shared, "b": shared}) == b'{"a":[1],"b":[1]}\n'


@pytest.mark.parametrize(("value", "state", "message"), [
    ({1, 2}, {}, "process() return value is not JSON-serializable: Object of type set is "
                 "not JSON serializable"),
    (1, {"s": {1}}, "process() state is not JSON-serializable: Object of type set is not "
                    "JSON serializable"),
    ({1}, {"s": {1}}, "process() return value is not JSON-serializable"),  # the first one
    (1, {"x": math.nan}, "process() state is not JSON-serializable: Out of range float values "
                         "are not JSON compliant"),
])
def test_the_result_check_names_the_bad_value(value: Any, state: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(TypeError) as got:
        harness.result_reply(value, state, 1)
    assert str(got.value).startswith(message)


@pytest.mark.parametrize(("threads", "line"), [  # UTF-8, as every line the harness writes
    (1, '{"type":"result","return":[1,"é"],"state":{"k":null}}\n'),
    (3, '{"type":"result","return":[1,"é"],"state":{"k":null},"lingering":true}\n'),
])
def test_the_result_line_is_the_reply_encoded_once(threads: int, line: str) -> None:
    assert harness.result_reply([1, "é"], {"k": None}, threads) == line.encode()


LINES = [
    b'{"type":"call","payload":{"input":21}}',
    b'{"a": [1, 2.5, -0.0, 1e400, -1e400, 123456789012345678901234567890]}',
    b'  {"leading": "whitespace"}',
    b'{"trailing": "whitespace"} \t\r\n ',
    b'"just a string"',
    b"42",
    b"null",
    b'[NaN, Infinity, -Infinity]',
    b'{"escapes": "\\u00e9\\ud83d\\ude00\\ud800\\n\\"\\\\\\/"}',
    '{"raw": "héllo ✓"}'.encode(),
    b'\xef\xbb\xbf{"bom": 1}',
    '{"utf16": 1}'.encode("utf-16"),
    '{"utf16le": 1}'.encode("utf-16-le"),
    '{"utf32": 1}'.encode("utf-32"),
    b'{"dup": 1, "dup": 2}',
    b'{"raw_surrogate": "\xed\xa0\x80"}',
]


@pytest.mark.parametrize("line", LINES, ids=range(len(LINES)))
def test_loads_is_json_loads(line: bytes) -> None:
    got, expected = harness.loads(line), json.loads(line)
    assert json.dumps(got) == json.dumps(expected)  # NaN != NaN: compare the texts
    assert type(got) is type(expected)


BAD_LINES = [b"", b" ", b"{", b'{"a": }', b'{"a": 1} x', b"[1,]", b"'single'", b'"\x01"',
             b"\xff\xfe\xfa", b"1 2", b'{"a" 1}', b"tru", b"[" * 100_000]


@pytest.mark.parametrize("line", BAD_LINES, ids=range(len(BAD_LINES)))
def test_bad_lines_raise_what_json_loads_raises(line: bytes) -> None:
    with pytest.raises(Exception) as expected:
        json.loads(line)
    with pytest.raises(Exception) as got:
        harness.loads(line)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


def test_the_harness_does_not_import_json_to_start() -> None:
    """The point of it all: `import json` was most of a fresh sandbox's start-up."""
    import subprocess
    import sys

    code = ("import sys; path = sys.argv[1]; "
            "exec(compile(open(path).read(), path, 'exec'), {'__name__': 'harness'}); "
            "print('json' in sys.modules, 're' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code,
                          str(HARNESS_DIR / "harness.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
