"""Port validation: the same verdicts and messages as jsonschema, at a bounded cost."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import math
import os
import random
import resource
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import orjson
import pytest
from schema_support import (
    SKUS,
    TWICE_RECURSIVE,
    nested,
    nested_unevaluated,
    shared_levels,
    sku_lines,
)

from service.manifest import validation, verdicts
from service.manifest.schemas import compile_schema
from service.manifest.schemawalk import (
    MOST_EVALUATIONS,
    evaluations,
    specification_of,
    unevaluated_depth,
)
from service.manifest.validation import SchemaValidator

HOSTILE_PATTERN = r"^(\w+\s?)*$"  # catastrophic backtracking on Python's re
HOSTILE_TEXT = "a" * 27 + "!"  # 2^27 ways to fail with re; linear with RE2


def validator(schema: Any, **options: Any) -> SchemaValidator:
    compiled, issues = compile_schema(schema, Path("/nonexistent/actor.yaml"), **options)
    assert compiled is not None, issues
    return compiled.validator


def mixed_items(n: int) -> list[Any]:
    rng = random.Random(12)
    return [rng.choice([i, f"s{i}", [i, str(i)], {"k": i, "v": [i]}, i + 0.5, f"t{i}"])
            for i in range(n)]


def test_messages_and_paths_are_jsonschema_s() -> None:
    schema = {"type": "object", "required": ["a"],
              "properties": {"a": {"type": "integer", "minimum": 1},
                             "b": {"type": "array", "items": {"enum": ["x", "y"]}},
                             "c": {"pattern": "^[A-Z]{3}$"}},
              "additionalProperties": False}
    value = {"a": 0, "b": ["x", "z"], "c": "eur", "d": 1}
    expected = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value),
                      key=lambda e: list(map(str, e.absolute_path)))
    assert validator(schema).errors(value) == [
        {"path": "".join(f"/{p}" for p in e.absolute_path), "message": e.message}
        for e in expected]
    assert validator(schema).errors({"a": 2, "b": [], "c": "EUR"}) == []


@pytest.mark.parametrize(("items", "unique"), [
    ([1, 1.0], False), ([1, True], True), ([0, False], True), ([None, 0], True),
    ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False), ([[1, 2], [2, 1]], True),
    ([{"a": [1]}, {"a": [1.0]}], False), (["1", 1], True), ([], True),
])
def test_unique_items_uses_json_equality(items: list[Any], unique: bool) -> None:
    assert jsonschema.Draft202012Validator({"uniqueItems": True}).is_valid(items) is unique
    v = validator({"uniqueItems": True})
    assert (v.errors(items) == []) is unique
    v._fast = None  # the jsonschema pass alone agrees too
    assert (v.errors(items) == []) is unique


def test_unique_items_of_thousands_of_mixed_items() -> None:
    items = mixed_items(8000)
    v = validator({"type": "array", "uniqueItems": True})
    assert v.errors(items) == []
    duplicated = [*items, items[100]]
    errors = v.errors(duplicated)
    assert len(errors) == 1 and errors[0]["path"] == ""
    # quoted by its beginning, not written out (see test_a_message_quotes_a_large_value...)
    assert errors[0]["message"] == f"{repr(duplicated)[:900]}... has non-unique elements"
    v._fast = None
    assert v.errors(duplicated) == errors


def test_a_catastrophic_pattern_is_linear() -> None:
    v = validator({"type": "string", "pattern": HOSTILE_PATTERN})
    message = f"{HOSTILE_TEXT!r} does not match {HOSTILE_PATTERN!r}"
    assert v.errors(HOSTILE_TEXT) == [{"path": "", "message": message}]
    v._fast = None
    assert v.errors(HOSTILE_TEXT) == [{"path": "", "message": message}]
    assert v.errors("ab cd") == []


def test_pattern_properties_and_additional_properties_are_linear() -> None:
    schema = {"type": "object", "patternProperties": {HOSTILE_PATTERN: {"type": "integer"}},
              "additionalProperties": False}
    v = validator(schema)
    v._fast = None
    assert v.errors({HOSTILE_TEXT: 1, "ok": "x"}) == [
        {"path": "", "message": f"{HOSTILE_TEXT!r} does not match any of the regexes: "
                                f"{HOSTILE_PATTERN!r}"},
        {"path": "/ok", "message": "'x' is not of type 'integer'"}]


def test_lookarounds_and_backreferences_still_work() -> None:
    v = validator({"type": "string", "pattern": r"^(?=.*\d)(\w)\1"})
    v._fast = None
    assert v.errors("aa1") == []
    assert [e["message"] for e in v.errors("ab1")] == [
        "'ab1' does not match '^(?=.*\\\\d)(\\\\w)\\\\1'"]


@pytest.mark.parametrize(("number", "divisor", "multiple"), [
    (0.0075, 0.0001, True),  # the float quotient, as jsonschema (exact binary would say no)
    (0.00751, 0.0001, False), (12391239123, 1e-8, True), (7.5, 2, False), (3.0, 1.5, True),
    (1e308, 0.123456789, False),  # the quotient overflows: exact, as jsonschema
    (1e300, 1e-300, False),  # jsonschema-rs's own multipleOf (decimal) says it is one
    (1.7976931348623157e308, 5e-324, True), (-4.5, 1.5, True), (0, 0.1, True),
])
def test_multiple_of_is_jsonschema_s_verdict_in_both_engines(number: Any, divisor: float,
                                                             multiple: bool) -> None:
    schema = {"multipleOf": divisor}
    assert jsonschema.Draft202012Validator(schema).is_valid(number) is multiple
    v = validator(schema)
    assert v.is_valid(number) is multiple
    errors = [] if multiple else [{"path": "", "message": f"{number!r} is not a multiple of "
                                                          f"{divisor}"}]
    assert v.errors(number) == errors
    v._fast = None
    assert v.errors(number) == errors


@pytest.mark.parametrize(("number", "divisor", "multiple"), [
    (10**400, 0.5, True), (10**400, 0.3, False), (10**400 + 1, 2, False), (-(10**400), 0.25, True),
    (1.5, 10**400, False), (0.0, 10**400, True),
], ids=["1e400/0.5", "1e400/0.3", "1e400+1/2", "-1e400/0.25", "1.5/1e400", "0.0/1e400"])
def test_multiple_of_an_integer_beyond_a_float_is_exact(number: Any, divisor: Any,
                                                        multiple: bool) -> None:
    """jsonschema raises OverflowError there (a call would answer -32603)."""
    schema = {"type": "array", "items": {"multipleOf": divisor}, "maxItems": 1}
    v = validator(schema)
    expected = [] if multiple else [{"path": "/0", "message": f"{number!r} is not a multiple "
                                                              f"of {divisor}"}]
    assert v.errors([number]) == expected
    assert [e["path"] for e in v.errors([number, number])] == ["", *(["/0", "/1"] * (not multiple))]
    v._fast = None
    assert v.errors([number]) == expected


def test_a_backtracking_pattern_leaves_the_verdict_to_jsonschema() -> None:
    """jsonschema-rs runs linear-time patterns only: a backtracking one costs milliseconds
    per string on the event loop; jsonschema (in a thread, with a deadline) decides."""
    assert validator({"patternProperties": {r"^(a|aa)+\1$": {}}})._fast is None
    assert validator({"propertyNames": {"pattern": r"(?=x)"}})._fast is None
    assert validator({"pattern": HOSTILE_PATTERN})._fast is not None


def test_a_slow_error_pass_falls_back_to_the_fast_engine_s_messages() -> None:
    v = validator({"type": "array", "items": {"type": "integer"}}, timeout_s=1e-9)
    assert v.errors([1, "x"]) == [{"path": "/1", "message": '"x" is not of type "integer"'}]


def test_no_verdict_in_time_refuses_the_value_and_says_why() -> None:
    v = validator({"type": "array", "items": {"type": "integer"}}, timeout_s=1e-9)
    v._fast = None
    assert v.errors([1, 2]) == [{"path": "", "message": "validation did not finish within "
                                                        "1e-09 s; the value is refused"}]


def test_the_errors_of_one_value_stay_within_64_kb() -> None:
    """Fifty errors at the path of one 100 KB object key would make a 5 MB answer."""
    key = "k" * 100_000
    v = validator({"additionalProperties": {"allOf": [{"type": "string"}] * 50}})
    cut = f"/{key[:4045]}... (100001 characters in all)"  # the path, cut as a message is
    error = {"path": cut, "message": "1 is not of type 'string'"}
    assert v.errors({key: 1}) == [error] * (65536 // (len(cut) + len(error["message"])))
    v = validator({"additionalProperties": {"allOf": [{"type": "string"}] * 50}})
    many = v.errors({f"{i:04}{'k' * 4000}": 1 for i in range(20)})  # 4030 characters each
    assert len(many) == 65536 // 4030 and many[0]["path"] == f"/0000{'k' * 4000}"


@pytest.mark.parametrize(("fast", "expected"), [
    (True, [{"path": "/0", "message": '"x" is not of type "integer"'}]),
    (False, [{"path": "", "message": "jsonschema could not check the value (OverflowError); "
                                     "the value is refused"}]),
])
def test_a_jsonschema_failure_refuses_the_value_and_says_why(
        monkeypatch: pytest.MonkeyPatch, fast: bool, expected: list[dict[str, str]]) -> None:
    v = validator({"type": "array", "items": {"type": "integer"}})
    if not fast:
        v._fast = None

    def broken(value: Any) -> Any:
        raise OverflowError("int too large to convert to float")
        yield  # a generator, like iter_errors

    monkeypatch.setattr(v, "_python", SimpleNamespace(iter_errors=broken))
    assert v.errors(["x"]) == expected


def test_a_jsonschema_failure_is_logged_once_not_for_every_value(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every value a client sends can meet the same failure: its traceback is logged once,
    the values still get jsonschema-rs's messages."""
    monkeypatch.setattr(validation, "_FAILURES", validation.RateLimit(60.0))
    v = validator({"type": "array", "items": {"type": "integer"}})

    def broken(value: Any) -> Any:
        raise TypeError("object of type 'bool' has no len()")
        yield  # a generator, like iter_errors

    monkeypatch.setattr(v, "_python", SimpleNamespace(iter_errors=broken))
    for n in range(1, 4):
        assert v.errors(["x"] * n) == [
            {"path": f"/{i}", "message": '"x" is not of type "integer"'} for i in range(n)]
    failures = [r for r in caplog.records if r.getMessage().startswith("jsonschema failed")]
    assert len(failures) == 1 and failures[0].exc_info is not None


@pytest.mark.parametrize("where", ["here", "allOf", "$ref"])
@pytest.mark.parametrize("fast", [True, False])
def test_a_boolean_items_counts_every_item_as_evaluated_in_draft_2019_09(
        where: str, fast: bool) -> None:
    """jsonschema fails (TypeError) on a boolean ``items`` it reaches from unevaluatedItems
    in draft 2019-09; a schema jsonschema-rs cannot judge (a lookahead) would then refuse
    every array, valid or not."""
    def schema(items: bool) -> dict[str, Any]:
        inner = {"items": items}
        outer: dict[str, Any] = {"unevaluatedItems": False}
        if not fast:
            outer["properties"] = {"a": {"pattern": "(?=a)"}}
        if where == "here":
            return {**outer, **inner}
        if where == "allOf":
            return {**outer, "allOf": [inner]}
        return {**outer, "$defs": {"i": inner}, "$ref": "#/$defs/i"}

    with pytest.raises(TypeError):
        list(jsonschema.Draft201909Validator(schema(True)).iter_errors([1, 2]))
    every, none = (SchemaValidator(schema(items), jsonschema.Draft201909Validator)
                   for items in (True, False))
    assert (every._fast is not None) is fast
    assert every.errors([]) == every.errors([1, "x"]) == none.errors([]) == []
    refused = [{"path": "/0", "message": "1 should not be valid under {}"},
               {"path": "/1", "message": "'x' should not be valid under {}"}]
    if where == "allOf":  # a failed subschema evaluates nothing
        refused.insert(0, {"path": "", "message": "Unevaluated items are not allowed "
                                                  "(1, 'x' were unexpected)"})
    assert none.errors([1, "x"]) == refused


def test_a_value_too_deep_for_jsonschema_is_refused_and_says_why() -> None:
    v = validator({"type": "array", "items": {"$ref": "#"}})
    value: Any = "x"
    for _ in range(900):
        value = [value]
    assert v.errors(value) == [{"path": "/0" * 900,
                                "message": '"x" is not of type "array"'}]  # jsonschema-rs's
    v._fast = None
    assert v.errors(value) == [{"path": "", "message": "jsonschema's recursion cannot go this "
                                                       "deep; the value is refused"}]


def test_values_the_fast_engine_cannot_take_are_left_to_jsonschema() -> None:
    v = validator({"type": "number"})
    assert v.is_valid(float("nan")) is not True
    assert v.errors(float("inf")) == [] and v.errors(float("nan")) == []


def test_format_is_an_annotation_unless_asserted() -> None:
    schema = {"type": "string", "format": "email"}
    assert validator(schema).errors("nope") == []
    asserted = validator(schema, format_assertion=True)
    assert asserted.errors("nope") == [{"path": "", "message": "'nope' is not a 'email'"}]
    assert asserted.errors("a@example.com") == []


@pytest.mark.parametrize(("fmt", "bad", "good"), [
    ("date-time", "2024-13-01T00:00:00Z", "2024-12-01T00:00:00Z"),
    ("time", "25:00:00Z", "12:00:00Z"),
    ("duration", "P1", "P1D"), ("uri", "no scheme", "https://example.com/a"),
    ("uri-reference", "\\\\", "#a"), ("hostname", "-a.example", "a.example"),
    ("json-pointer", "a", "/a"), ("relative-json-pointer", "/a", "0/a"),
    ("uri-template", "{a", "{a}"),
    ("iri", "no scheme", "https://\u00e9.example"), ("ipv4", "256.1.1.1", "1.2.3.4"),
])
def test_every_format_is_checked_when_asserted(fmt: str, bad: str, good: str) -> None:
    """jsonschema's own checker knows 8 formats (the rest need optional packages): date-time,
    uri and the others passed whatever jsonschema-rs said (its refusal is not the last word).
    Both engines now take jsonschema-rs's checks."""
    asserted = validator({"format": fmt}, format_assertion=True)
    assert asserted.errors(bad) == [{"path": "", "message": f"{bad!r} is not a {fmt!r}"}]
    assert asserted.errors(good) == []


def test_host_names_are_judged_as_their_rfcs_say() -> None:
    """An ACE prefix in capitals is one (RFC 3490 §5); IDNA2008 refuses full-width and
    upper-case letters (RFC 5892), which jsonschema-rs took."""
    hostname = validator({"format": "hostname"}, format_assertion=True)
    assert hostname.errors("XN--ZCKZAH") == [] and hostname.errors("-a.example") != []
    idn = validator({"format": "idn-hostname"}, format_assertion=True)
    assert [idn.errors(name) == [] for name in ("\uff21", "\u00c9", "\ufb01", "\u00e9.example",
                                               "\u00df.de")] == [False, False, False, True, True]


async def test_format_assertion_keeps_the_fast_verdict() -> None:
    """jsonschema-rs judges the value and calls back _Formats for the formats it would judge
    otherwise (email: jsonschema checks it too, idn-hostname: IDNA2008). Such a schema went
    to jsonschema alone: 40,000 addresses took 155 ms, against 26 ms; at ~1 s per MB for a
    richer schema, a large valid value ran out of time and was refused."""
    v = validator({"type": "array", "items": {"format": "email", "maxLength": 40}},
                  format_assertion=True, timeout_s=1)
    emails = [f"user{i}@example.com" for i in range(60_000)]
    assert v.is_valid(emails) is True and await v.check(emails) == []
    emails[40_000] = "user40000.example.com"
    assert v.is_valid(emails) is False
    [error] = await v.check(emails)
    assert error == {"path": "/40000", "message": "'user40000.example.com' is not a 'email'"}
    hosts = validator({"items": {"format": "idn-hostname"}}, format_assertion=True)
    assert hosts.is_valid(["\u00e9.example", "xn--zckzah"]) is True
    assert hosts.is_valid(["\uff21"]) is False  # full-width A: jsonschema-rs alone took it


def test_at_most_fifty_errors() -> None:
    v = validator({"items": {"type": "string"}})
    assert len(v.errors(list(range(1000)))) == 50


def test_a_message_quoting_a_large_value_is_cut() -> None:
    """Fifty messages quoting the same 1 MB array would make a 50 MB answer."""
    v = validator({"allOf": [{"maxItems": 1}] * 50}, timeout_s=30)
    value = list(range(150_000))
    errors = v.errors(value)
    assert len(errors) == 50
    for error in errors:
        assert error["message"] == f"{repr(value)[:900]}... is too long"
    v = validator({"type": "string"}, timeout_s=1e-9)  # jsonschema-rs's, past the deadline
    [error] = v.errors(value)
    assert error["message"].startswith("[0,") and error["message"].endswith(" characters in all)")
    assert len(error["message"]) < 1000


LONG = validation.QUOTING_VALUE_CHARS


@pytest.mark.parametrize("value", [
    [0] * (LONG // 2 - 1), [0] * (LONG // 2), [[]] * (LONG // 3), ["a" * (LONG - 2)],
    ["a" * (LONG - 4)], {"k" * 20: "v" * (LONG - 30)}, [{"": 0}] * (LONG // 6), 7, "a" * LONG,
    [[0] * 4000] * 3, [10**30] * (LONG // 32), [1.5e-300] * (LONG // 9),
])
def test_a_value_is_long_where_its_json_is(value: Any) -> None:
    assert validation._long(value) is (len(json.dumps(value, separators=(",", ":"))) > LONG)


def test_a_large_container_is_long_without_being_written_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing out 350,000 empty objects to know they are long took ~5 ms, in one call that
    held the GIL: every turn of the event loop waited for the error pass's thread."""
    monkeypatch.setattr(validation, "_json", lambda value: pytest.fail("written out"))
    assert validation._long([{}] * 350_000)
    assert validation._long({str(i): 0 for i in range(LONG // 2 + 1)})
    assert validation._long([[[]]] * (LONG // 4))  # counted, not written


def test_a_value_nested_past_the_recursion_limit_is_long_without_an_error() -> None:
    """An output may nest 1,000 deep (its line was read by the reference decoder): too deep
    to count, and for orjson to write, which makes it long."""
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    assert validation._long(deep)


@pytest.mark.parametrize("value", [
    1, -2.5, 1e-07, 10**30, "it's", 'say "hi"', "\n\u2028\ud800", None, True, [], {},
    [1, [2.5, {"k": "v", "n": None}]], {"a": [1.5, "s"], "b": {}}, list(range(150)),
])
def test_a_type_or_enum_message_quotes_a_value_as_jsonschema_does(value: Any) -> None:
    for schema, words in (({"type": "object", "minProperties": 9}, "is not of type 'object'"),
                          ({"enum": [0]}, "is not one of [0]")):
        if isinstance(value, dict) and "type" in schema:
            schema = {"type": "array"}
            words = "is not of type 'array'"
        [error] = validator(schema).errors(value)
        assert error["message"] == f"{value!r} {words}"


@pytest.mark.parametrize("value", [
    [1e-300] * 100_000, {f"k{i}": [i] for i in range(100_000)}, "x" * 1_000_000,
    [[[0] * 1000] * 100] * 10,
])
def test_a_large_value_is_quoted_by_its_beginning(value: Any) -> None:
    """The message was cut from a repr of all of it: 50 ms for 1 MiB of floats, in one
    call that held the GIL (the event loop waiting) and that no deadline could stop."""
    for schema, words in (({"type": "number"}, "is not of type 'number'"),
                          ({"enum": [0]}, "is not one of [0]")):
        [error] = validator(schema).errors(value)
        quoted = error["message"][:-len(words) - 1]
        assert quoted.endswith("...") and len(quoted) == 903
        assert repr(value).startswith(quoted[:-3])


def _failing(size: int) -> list[tuple[Any, Any, Any]]:
    """(schema, a value of about ``size`` items that fails it, the part its message quotes)
    for every keyword whose message quotes the value (besides type and enum, above)."""
    floats = [1e-300 + i for i in range(size)]
    keyed = {f"k{i}": [i] for i in range(size)}
    return [
        ({"maxItems": 1}, floats, floats), ({"minItems": 10**9}, floats, floats),
        ({"contains": {"type": "string"}}, floats, floats), ({"not": {}}, floats, floats),
        ({"anyOf": [{"maxItems": 1}, {"type": "string"}]}, floats, floats),
        ({"oneOf": [{"maxItems": 1}]}, floats, floats),
        ({"uniqueItems": True}, [*floats, floats[0]], [*floats, floats[0]]),
        ({"maxProperties": 1}, keyed, keyed), ({"minProperties": 10**9}, keyed, keyed),
        ({"properties": {"a": False}}, {"a": floats}, floats),
        ({"items": {"items": False}}, [floats], floats),
        ({"prefixItems": [{}], "items": False}, [0, *floats], floats),
        ({"allOf": [{"maxItems": 1}, {"not": {}}]}, [floats], [floats]),
    ]


@pytest.mark.parametrize("case", range(len(_failing(1))))
def test_every_message_quotes_a_large_value_by_its_beginning(case: int) -> None:
    """jsonschema's message, with the value quoted as type and enum messages quote it: each
    such message wrote the whole value out in one call that held the GIL (~60 ms for 1 MB of
    floats, the event loop waiting; a schema with four of them held it 120-140 ms)."""
    for size in (3, 100_000):  # a small value's message is jsonschema's, to the letter
        schema, value, quoted = _failing(size)[case]
        stock = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
        errors = validator(schema, timeout_s=30).errors(value)
        if size > 3:
            stock = [m.replace(repr(quoted), f"{repr(quoted)[:900]}...") for m in stock]
            assert all(len(error["message"]) < 1000 for error in errors)
        assert [error["message"] for error in errors] == stock


def test_many_unexpected_names_are_counted_not_listed() -> None:
    """Past 64, with the first three named: 100,000 names took ~100 ms to sort and quote,
    the GIL held for the sort."""
    extra = {f"k{i}": 0 for i in range(100_000)}
    [error] = validator({"additionalProperties": False}).errors(extra)
    assert error == {"path": "", "message": "Additional properties are not allowed (100000 "
                                            "were unexpected, 'k0', 'k1', 'k2' among them)"}
    [error] = validator({"patternProperties": {"^x": {}, "^y": {}},
                         "additionalProperties": False}).errors(extra)
    assert error["message"] == ("100000 names do not match any of the regexes: '^x', '^y' "
                                "('k0', 'k1', 'k2' among them)")
    few = {f"k{i}": 0 for i in range(64, 0, -1)}  # up to 64: jsonschema's, sorted
    [error] = validator({"additionalProperties": False}).errors(few)
    names = ", ".join(repr(name) for name in sorted(few))
    assert error["message"] == f"Additional properties are not allowed ({names} were unexpected)"


def test_a_path_through_a_long_key_is_cut() -> None:
    """A path is made of the value's keys: the first error's is bounded too (the first
    error is always kept, whatever its size)."""
    key = "/" * 400_000
    pointer = "~1" * 400_000
    for timeout_s in (30, 1e-9):  # jsonschema's errors, then jsonschema-rs's past the deadline
        v = validator({"additionalProperties": {"type": "integer"}}, timeout_s=timeout_s)
        [error] = v.errors({key: "x"})
        assert error["path"] == f"/{pointer[:4045]}... ({len(pointer) + 1} characters in all)"


async def test_check_runs_a_costly_verdict_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The multipleOf verdict of a container past LOOP_VERDICT_BYTES is the verdict
    process's (it calls Python back: in a thread, it would take the GIL from the loop)."""
    threads: list[Any] = []
    monkeypatch.setattr(validation, "_off_loop", lambda fn, *args: _recorded(threads, fn, *args))
    v = validator({"type": "array", "items": {"multipleOf": 0.5}})
    assert await v.check([1.5] * 10) == [] and threads == []
    big = [1.5] * 10_000  # 40 KB
    assert await v.check(big) == [] and threads == [v._verdict_elsewhere]
    # orjson cannot size it, nor write it: it goes pickled, and is judged there all the same
    assert await v.check([10**30]) == [] and threads[1:] == [v._verdict_elsewhere]
    assert await v.check([10**30, 0.3]) == [{"path": "/1",
                                             "message": "0.3 is not a multiple of 0.5"}]
    assert threads[2:] == [v._verdict_elsewhere, v._errors_elsewhere]
    plain = validator({"type": "array", "items": {"type": "number"}})
    assert await plain.check(big) == [] and len(threads) == 4  # cheap keywords: on the loop


async def _recorded(threads: list[Any], fn: Any, *args: Any) -> Any:
    threads.append(fn)
    return fn(*args)


async def test_error_passes_do_not_wait_for_the_default_executor() -> None:
    """The loop's default executor serves other work (reading manifests): a busy one must
    not hold up the answer to an invalid value."""
    import asyncio
    import threading
    loop = asyncio.get_running_loop()
    release = threading.Event()
    blockers = [loop.run_in_executor(None, release.wait) for _ in range(40)]
    try:
        v = validator({"type": "string", "pattern": "^a$"})
        async with asyncio.timeout(5):
            assert [e["path"] for e in await v.check("b")] == [""]
    finally:
        release.set()
        await asyncio.gather(*blockers)


async def test_check_runs_the_error_pass_off_the_loop() -> None:
    v = validator({"type": "string", "pattern": HOSTILE_PATTERN})
    assert await v.check("ab") == []
    assert [e["path"] for e in await v.check(HOSTILE_TEXT)] == [""]


# 1 MiB with no c: a[^c]{1000}c took jsonschema-rs 13 s on it, GIL held
SLOW_TEXT = "".join("ab"[bin(i).count("1") & 1] for i in range(1 << 20))


def deadline(v: SchemaValidator) -> float:
    """The deadline a check by ``v`` starting now has."""
    return time.monotonic() + v.timeout_s


async def _longest_loop_gap_s(work: Any) -> tuple[Any, float]:
    """``await work`` while a ticker measures the event loop's longest stall, with the test
    run's heap frozen as a started server's is (heap.settle_heap): a full collection of
    pytest's ~250,000 objects, which the work's allocations may set off, took ~115 ms."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    gc.collect()
    gc.freeze()

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # ticking before the work starts: work that never yields shows too
    try:
        result = await work
        await asyncio.sleep(0.02)  # the tick the work held up, if it did
        return result, max(gaps, default=0.0)
    finally:
        ticker.cancel()
        gc.unfreeze()


async def test_a_verdict_costly_for_its_patterns_is_given_in_the_verdict_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema-rs's linear-time patterns cost up to ~1.4 ns per character per program
    step, and it holds the GIL: a[^c]{1000}c on 1 MiB held the event loop for 13 s. Such a
    verdict runs in the verdict process; one still running at its deadline has the process
    killed, and the value is refused (past its deadline, no process is asked for errors);
    the next value starts a new one."""
    pool = verdicts.VerdictPool(1)
    monkeypatch.setattr(verdicts, "VERDICTS", pool)
    v = validator({"type": "string", "pattern": "a[^c]{1000}c"}, timeout_s=0.5)
    assert await v._verdict("ab" * 100, deadline(v)) is False  # small: on the loop
    try:
        errors, gap_s = await _longest_loop_gap_s(v.check(SLOW_TEXT))
        assert errors == [{"path": "", "message": "validation did not finish within 0.5 s; "
                                                  "the value is refused"}] and gap_s < 0.5, gap_s
        assert pool.started == 1  # killed at the deadline; past it, no process is asked
        assert await v._verdict("a" + "b" * 1000 + "c" + "b" * 6000, deadline(v)) is True
        assert pool.started == 2  # the next value starts a new one
    finally:
        pool.stop()


async def test_unique_arrays_that_hash_alike_are_told_apart_in_linear_time() -> None:
    """jsonschema-rs hashed [], [[]], [[], []]... alike and compared every pair of them: 8,192
    arrays of 13 such arrays (0.45 MB) held the event loop for seconds (0.95 MB: 29 s). Its
    uniqueItems is now the server's own (verdicts.all_distinct), and a value this large is
    judged in the verdict process."""
    levels = 13
    value = [[[[]] if (i >> b) & 1 else [] for b in range(levels)] for i in range(2 ** levels)]
    v = validator({"type": "array", "uniqueItems": True})
    errors, gap_s = await _longest_loop_gap_s(v.check(value))
    assert errors == [] and gap_s < 0.25, gap_s
    [error] = await v.check([*value, value[5]])
    assert error["path"] == "" and error["message"].endswith("... has non-unique elements")
    assert verdicts.rust_validator({"uniqueItems": True}, "draft2020-12", False).is_valid(
        [[], [[]], [[], []], [1], [1.0]]) is False  # 1 == 1.0, as JSON Schema has it


@pytest.mark.parametrize("keyword", validation.DEPENDENCY_KEYWORDS)
async def test_dependency_entries_count_against_the_loops_budget(keyword: str) -> None:
    """jsonschema-rs tries every entry on every object: 300 entries over 330,000 objects
    held the event loop for 0.5 s."""
    entries = {f"d{i}": ["x"] if keyword != "dependentSchemas" else {} for i in range(300)}
    schema = {"items": {keyword: entries}}
    if keyword == "dependencies":
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    # the verdict process's ~0.5 s took over a second on a loaded CI machine: what counts
    # here is the loop, not that time
    v = validator(schema, timeout_s=30)
    errors, gap_s = await _longest_loop_gap_s(v.check([{}] * 330_000))
    assert errors == [] and gap_s < 0.25, gap_s


async def test_a_valid_value_too_costly_for_the_loop_is_accepted() -> None:
    """A 900 KB array against a pattern is over the loop's budget for jsonschema-rs. It used
    to go to jsonschema, which takes ~1 s per MB: the valid value was refused for time.
    The verdict process accepts it; a wrong line is refused with its path."""
    v = validator(SKUS)
    lines = sku_lines(9000)
    assert v._verdict_steps(len(orjson.dumps(lines))) > validation.LOOP_VERDICT_STEPS
    errors, gap_s = await _longest_loop_gap_s(v.check(lines))
    assert errors == [] and gap_s < 0.5, gap_s
    assert v.errors(lines) == []  # the loader's check of an example: the same
    lines[8000]["sku"] = "SKU-8000"
    # jsonschema's message, or jsonschema-rs's when jsonschema's pass runs out of time
    [error] = await v.check(lines)
    assert error["path"] == "/8000/sku" and "SKU-8000" in error["message"], error


async def test_a_hostile_value_holds_one_verdict_process_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While one process runs a value to its deadline, the other takes the next value (with
    one process, the valid value would wait for it past its own deadline)."""
    pool = verdicts.VerdictPool(2)
    monkeypatch.setattr(verdicts, "VERDICTS", pool)
    hostile = validator({"type": "string", "pattern": "a[^c]{1000}c"}, timeout_s=0.5)
    try:
        refused, accepted = await asyncio.gather(hostile.check(SLOW_TEXT),
                                                 validator(SKUS, timeout_s=0.5).check(
                                                     sku_lines(9000)))
    finally:
        pool.stop()
    assert refused == [{"path": "", "message": "validation did not finish within 0.5 s; the "
                                               "value is refused"}]
    assert accepted == []


@pytest.mark.parametrize(("value", "decoder"), [
    ([1.5, "é", {"a": [True]}], "o"),
    ([math.nan, "x"], "p"), ([-math.inf, None], "p"),  # orjson writes null for both
    ([None, 1.5], "p"),  # null: it might stand for NaN
    ([2**64, "x"], "p"), ([int("9" * 4000)], "p"), (["\ud800"], "p"),  # orjson refuses them
])
def test_the_verdict_process_reads_back_the_value_the_server_has(value: Any,
                                                                  decoder: str) -> None:
    line, found = verdicts.portable(value)
    assert found == decoder and b"\n" not in line
    assert repr(verdicts.read(line, decoder)[0]) == repr(value)  # (nan != nan)


def test_a_value_orjson_cannot_write_is_not_written_by_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """4,000-digit integers: the standard library wrote them in quadratic time, holding the
    interpreter (~45 ms for 1 MB, in a thread, while the event loop waited); and a value
    holding null was written again to look for NaN (13 ms for 1 MB)."""
    def refused(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("json.dumps wrote a value")

    monkeypatch.setattr(verdicts.json, "dumps", refused)
    for value in ([int("7" * 4000) + i for i in range(240)], [{"a": None}] * 1000):
        line, decoder = verdicts.portable(value)
        assert decoder == "p" and verdicts.read(line, decoder)[0] == value


async def test_a_refused_value_is_written_for_the_verdict_processes_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its verdict's request and its error pass send the same line (1 MB: 1-20 ms to write,
    in a thread, the interpreter held)."""
    written: list[Any] = []

    def portable(value: Any, text: bytes | None = None) -> Any:
        written.append(value)
        return real(value, text)

    real = verdicts.portable
    monkeypatch.setattr(verdicts, "portable", portable)
    v = validator({"type": "array", "uniqueItems": True})
    value = [i + 0.5 for i in range(20_000)] + [0.5]  # past what the loop judges
    [error] = await v.check(value)
    assert error["message"].endswith("has non-unique elements") and written == [value]


@pytest.mark.parametrize(("schema", "format_assertion", "values"), [
    ({"multipleOf": 0.0001}, False, [0.0075, 0.00751, 2**62]),  # Python's, called from Rust
    ({"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 1,
      "exclusiveMaximum": True}, False, [1, 0.5]),
    ({"format": "email"}, True, ["a@example.com", "nope"]),
    ({"format": "email"}, False, ["nope"]),
    (SKUS, False, [[{"sku": "sku-1"}], [{"sku": "SKU-1"}], [{}]]),
])
def test_the_verdict_process_judges_as_the_server_does(schema: dict[str, Any],
                                                       format_assertion: bool,
                                                       values: list[Any]) -> None:
    v = validator(schema, format_assertion=format_assertion)
    for value in values:
        assert v._verdict_elsewhere(value, deadline(v)) is v.is_valid(value), value


def test_the_verdict_process_is_reached_past_select_s_descriptors() -> None:
    """A busy server's descriptors are numbered past 1024, which select() cannot wait on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    taken = [os.dup(2)]
    while taken[-1] < 1100:
        taken.append(os.dup(2))
    pool = verdicts.VerdictPool(1)
    try:
        key = verdicts.schema_key(SKUS, "draft2020-12", False)
        assert key is not None
        assert pool.verdict(key, (b'[{"sku":"sku-1"}]', "o"), time.monotonic() + 5) is True
        assert pool.verdict(key, (b'[{"sku":"SKU-1"}]', "o"), time.monotonic() + 5) is False
    finally:
        pool.stop()
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_verdict_process_answers_each_value() -> None:
    """``ready``, then one answer line for each three lines of a request: a verdict, or
    jsonschema's errors (as the server's own pass gives them); none for what it cannot
    compile or read, and it goes on."""
    key = verdicts.schema_key(SKUS, "draft2020-12", False)
    bad_key = verdicts.schema_key({"pattern": "(?<=a)b"}, "draft2020-12", False)
    big_key = verdicts.schema_key({"maximum": 10}, "draft2020-12", False)
    unique_key = verdicts.schema_key({"uniqueItems": True}, "draft2020-12", False)
    assert key is not None and bad_key is not None and big_key is not None \
        and unique_key is not None
    pairs = [[i, i + 1] for i in range(verdicts.PARK_CONTAINERS)]
    later = repr(time.monotonic() + 30).encode()

    def explain(key: bytes, text: bytes, verdict: bytes = b"0", decoder: bytes = b"o") -> bytes:
        return b"e 1.0 " + later + b" " + verdict + b" " + decoder + b"\n" + key + b"\n" \
            + text + b"\n"

    def pickled(value: Any) -> bytes:
        line, decoder = verdicts.portable(value)
        assert decoder == "p"
        return line

    requests = b"".join([b"v o\n", key, b"\n[]\n", b"v o\n", key, b'\n[{"sku":"x"}]\n',
                         b"v o\n", bad_key, b'\n"b"\n', b"v o\n", key, b"\n[\n",
                         b'v o\n["nonsense"]\n1\n', explain(key, b'[{"sku":"x"}]'),
                         explain(bad_key, b'"b"', b"-"),
                         explain(big_key, pickled(2**64 + 1), b"-", b"p"),
                         b"v p\n", big_key, b"\n", pickled(2**64 + 1), b"\n",
                         b"v p\n", big_key, b"\n", pickled(-2**64), b"\n",
                         explain(key, b"["), b"v o\n", key, b"\n[]\n",
                         # more containers than PARK_CONTAINERS: the collector paused, then
                         # the value frozen out of its reach; one collection after the answer
                         b"v o\n", unique_key, b"\n", orjson.dumps(pairs), b"\n",
                         explain(unique_key, orjson.dumps([*pairs, [0, 1]])),
                         explain(unique_key, pickled([*pairs, [0, 1], None]), b"0", b"p")])
    answers = io.BytesIO()
    frozen = gc.get_freeze_count()
    verdicts.serve(io.BytesIO(requests), answers)
    assert gc.isenabled() and gc.get_freeze_count() == frozen  # as it found them
    sku_errors = validator(SKUS).errors([{"sku": "x"}])
    unique_errors = validator({"uniqueItems": True}).errors([*pairs, [0, 1]])
    assert sku_errors and unique_errors
    assert answers.getvalue().split(b"\n") == [
        b"ready", b"1", b"0", b"-", b"-", b"-", orjson.dumps(sku_errors),
        orjson.dumps([{"path": "", "message": "'b' does not match '(?<=a)b'"}]),
        orjson.dumps([{"path": "", "message": f"{2**64 + 1} is greater than the maximum of 10"}]),
        b"0", b"1", b"-", b"1", b"1", orjson.dumps(unique_errors),
        orjson.dumps(unique_errors), b""]


@pytest.mark.parametrize(("schema", "depth"), [
    (nested_unevaluated(0), 0), (nested_unevaluated(1), 1), (nested_unevaluated(5), 5),
    (nested_unevaluated(3, "oneOf"), 3),
    ({"$ref": "#/$defs/a", "unevaluatedProperties": False,  # through references
      "$defs": {"a": {"$ref": "#/$defs/b", "unevaluatedItems": False},
                "b": {"unevaluatedProperties": False}}}, 3),
    ({"$id": "https://example.com/tree", "$dynamicAnchor": "node",  # recursion: once
      "unevaluatedProperties": False,
      "properties": {"children": {"items": {"$dynamicRef": "#node"}}}}, 1),
])
def test_nested_unevaluated_keywords_are_counted(schema: dict[str, Any], depth: int) -> None:
    spec = specification_of(jsonschema.Draft202012Validator)
    assert unevaluated_depth(schema, spec) == depth


async def test_a_verdict_costly_for_nested_unevaluated_keywords_is_given_elsewhere() -> None:
    """Each level of unevaluatedProperties beside an anyOf evaluates the levels below again,
    and jsonschema-rs holds the GIL: 12 levels held the event loop 50 ms for a 16-byte value,
    16 levels a minute for 39 KB. A value whose verdict could cost more than the loop's
    budget gets it from the verdict process, or none by its deadline; jsonschema explains
    a refusal off the loop, within the same deadline."""
    v = validator(nested_unevaluated(4), timeout_s=0.5)
    big = {f"k{i}": [1, 2, 3] for i in range(20_000)}  # ~400 KB
    assert await v._verdict({"a": 1, "b0": "x"}, deadline(v)) is True  # cheap: on the loop
    assert await v._verdict(big, deadline(v)) is False  # in the verdict process
    deep = validator(nested_unevaluated(16), timeout_s=0.5)
    assert await deep._verdict({"a": 1}, deadline(deep)) is None  # seconds: none in time
    for slow, value in ((v, big), (deep, {"a": 1})):
        errors, gap_s = await _longest_loop_gap_s(slow.check(value))
        assert len(errors) == 1 and gap_s < 0.5, (errors, gap_s)


X = {"allOf": [{"type": "string"}, {"minLength": 1}]}


@pytest.mark.parametrize(("schema", "counts"), [
    ({"type": "integer"}, (1, 0)),
    (shared_levels(10), (2 ** 12 - 2, 0)),  # each level twice, in place
    (shared_levels(10, "oneOf", below="items"), (2 ** 11, 0)),  # twice, at the items below
    ({"properties": {"a": {"$ref": "#/$defs/x"}, "b": {"$ref": "#/$defs/x"}},
      "$defs": {"x": X}}, (4, 0)),  # two names: never at the same location
    ({"properties": {"a": {"$ref": "#/$defs/x"}},
      "patternProperties": {"^a": {"$ref": "#/$defs/x"}},
      "$defs": {"x": X}}, (8, 0)),  # a name and a pattern: both may apply to "a"
    ({"items": {"$ref": "#/$defs/x"}, "contains": {"$ref": "#/$defs/x"},
      "$defs": {"x": X}}, (8, 0)),  # both apply to every item
    ({"$id": 5, "items": {"$id": []}}, (1, 0)),  # ids referencing cannot read: no failure
    ({"type": "array", "items": {"$ref": "#"}}, (2, 1)),  # a tree: entered once per level
    ({"properties": {"left": {"$ref": "#"}, "right": {"$ref": "#"}}}, (2, 1)),
    (TWICE_RECURSIVE, (4, 2)),  # entered twice per level
    (shared_levels(70), (MOST_EVALUATIONS, 0)),  # counted up to a cap
])
def test_evaluations_of_one_location_are_counted(schema: dict[str, Any],
                                                  counts: tuple[int, int]) -> None:
    assert evaluations(schema, specification_of(jsonschema.Draft202012Validator)) == counts


@pytest.mark.parametrize(("schema", "value"), [
    (shared_levels(28), "x"), (shared_levels(24, below="items"), nested(24)),
    (shared_levels(28, "allOf"), 1),  # valid, a number: every path is evaluated
])
async def test_a_verdict_costly_for_shared_definitions_is_given_elsewhere(
        schema: dict[str, Any], value: Any) -> None:
    """A definition reached along 2**24 paths: jsonschema-rs held the event loop 0.2-0.9 s
    for a one-character value (2**28: 3 s). It gets no verdict there, nor one in the verdict
    process by its deadline; jsonschema's error pass runs out of time off the loop, and
    jsonschema-rs's error list (as many evaluations again) is not asked for."""
    cheap = validator(shared_levels(4, below="items"))
    assert await cheap._verdict(nested(4), deadline(cheap)) is False
    v = validator(schema, timeout_s=0.2)
    assert await v._verdict(value, deadline(v)) is None
    errors, gap_s = await _longest_loop_gap_s(v.check(value))
    refused = [{"path": "", "message": "validation did not finish within 0.2 s; the value is "
                                       "refused"}]
    assert errors == refused and gap_s < 0.5, gap_s
    assert v.errors(value) == refused  # the loader's check of an example: the same


async def test_a_schema_evaluated_as_written_is_linear_however_many_its_branches() -> None:
    """A oneOf of 40 event types evaluates each item 41 times, each type's own parts: what
    the schema as written costs, as many subschemas as it has. A 300 KB batch keeps its
    jsonschema-rs verdict (a few ms); jsonschema would take seconds for it."""
    events = [{"type": "object", "required": ["kind"],
               "properties": {"kind": {"const": f"e{i}"},
                              "data": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
              for i in range(40)]
    v = validator({"type": "array", "items": {"oneOf": events}})
    batch = [{"kind": "e39", "data": {"x": 1}}] * 10_000
    assert await v._verdict(batch, deadline(v)) is True
    assert await v._verdict([*batch, {"kind": "e40"}], deadline(v)) is False


async def test_jsonschema_rs_errors_stand_in_only_where_they_cost_linear_time() -> None:
    """Past jsonschema's deadline, jsonschema-rs's error list stood in: for a recursion
    entered twice at each level, it evaluated both branches at each level of 18 nested
    arrays again, minutes with the GIL held. It stands in where a recursion is entered once
    (the value too deep for jsonschema above), not here."""
    v = validator(TWICE_RECURSIVE, timeout_s=0.2)
    assert await v._verdict(nested(18), deadline(v)) is False  # jsonschema-rs's verdict: cheap
    errors, gap_s = await _longest_loop_gap_s(v.check(nested(18)))
    assert errors == [{"path": "", "message": "validation did not finish within 0.2 s; "
                                              "the value is refused"}]
    assert gap_s < 0.5, gap_s


async def test_an_error_pass_past_its_deadline_refuses_the_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One RE2 search cannot be stopped: the call does not wait for it past timeout_s."""
    v = validator({"type": "string", "pattern": "^a$"}, timeout_s=0.1)
    monkeypatch.setattr(v, "_errors_elsewhere", lambda *args: time.sleep(1.5))
    monkeypatch.setattr(validation, "DEADLINE_SLACK_S", 0.1)
    started = time.monotonic()
    assert await v.check("b") == [
        {"path": "", "message": "validation did not finish within 0.1 s; the value is refused"}]
    assert time.monotonic() - started < 1.0


PAD = "y" * 5000  # past ERRORS_HERE_STEPS: explained in a verdict process


@pytest.mark.parametrize("value", [
    {"n": 4, "extra": "x", "pad": PAD},
    {"n": 2**64 + 1, "extra": math.nan, "pad": PAD},  # the standard library's JSON carries them
    {"\ud800": "x", "pad": PAD},  # and a path with a lone surrogate, back
])
async def test_the_error_pass_runs_in_a_verdict_process(monkeypatch: pytest.MonkeyPatch,
                                                        value: Any) -> None:
    """jsonschema's pass is Python: in a thread of the server, it took the interpreter from
    the event loop 5 ms at a time. A verdict process writes the errors of a value that is
    not small; the server reads them, the same as its own pass would give."""
    v = validator({"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}},
                   "additionalProperties": {"type": "integer"}})
    expected = v.errors(value)
    assert expected != []

    def in_the_server(*args: Any) -> None:
        raise AssertionError("the error pass ran in the server")

    monkeypatch.setattr(SchemaValidator, "_errors", in_the_server)
    assert await v.check(value) == expected


async def test_a_small_value_is_explained_in_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few ms of jsonschema: no wait behind the verdict processes' costly values."""
    def elsewhere(*args: Any) -> None:
        raise AssertionError("a verdict process was asked")

    monkeypatch.setattr(verdicts.VERDICTS, "errors", elsewhere)
    v = validator({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert await v.check({"n": "x"}) == [{"path": "/n", "message": "'x' is not of type 'integer'"}]


async def test_a_verdict_process_s_start_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the child takes ~0.25 s: counted, it left a 0.2 s pass no time."""
    pool = verdicts.VerdictPool(1)
    monkeypatch.setattr(verdicts, "VERDICTS", pool)
    v = validator({"type": "object", "properties": {"n": {"type": "integer"}}}, timeout_s=0.2)
    try:
        assert await v.check({"n": "x", "pad": PAD}) == [
            {"path": "/n", "message": "'x' is not of type 'integer'"}]  # jsonschema's words
        assert pool.started == 1
    finally:
        pool.stop()


def test_an_error_pass_queued_past_its_deadline_asks_no_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def elsewhere(*args: Any) -> None:
        raise AssertionError("a verdict process was asked")

    monkeypatch.setattr(verdicts.VERDICTS, "errors", elsewhere)
    v = validator({"type": "object", "properties": {"n": {"type": "integer"}}})
    # jsonschema-rs's own messages stand in, where linear
    assert v._errors_elsewhere({"n": "x", "pad": PAD}, False, time.monotonic() - 1) == [
        {"path": "/n", "message": '"x" is not of type "integer"'}]


@pytest.mark.parametrize(("answer", "found"), [
    (b'[{"path":"","message":"m"}]', [{"path": "", "message": "m"}]),
    (b'[{"path":"/\\ud800","message":"m"}]', [{"path": "/\ud800", "message": "m"}]),
    (b"1", None), (b"[1]", None), (b'[{"path":""}]', None), (b"[", None),
])
def test_an_error_list_is_read_only_as_one(answer: bytes, found: Any) -> None:
    assert validation._error_list(answer) == found


async def test_a_value_too_deep_to_write_is_explained_in_the_server() -> None:
    v = validator({"type": "array", "items": {"type": "array"}})
    deep: list[Any] = [1]
    for _ in range(5000):
        deep = [deep]
    assert verdicts.portable(deep) is None
    [error] = await v.check([deep, 1])
    assert error["path"] == "/1"


async def test_concurrent_error_passes_leave_the_loop_its_interpreter() -> None:
    """Eight values refused with 40,000 unevaluated keys each: their passes in threads of
    the server held the event loop for 97-170 ms at a time (each callback that gave up the
    interpreter waited 5 ms to get it back, behind every thread)."""
    v = validator({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": False},
                  timeout_s=30)
    values = [{f"k{i}_{j}": j for j in range(40_000)} for i in range(8)]
    results, gap_s = await _longest_loop_gap_s(
        asyncio.gather(*(v.check(value) for value in values)))
    assert all(error["message"].startswith("Unevaluated properties are not allowed ('k")
               for [error] in results)
    assert gap_s < 0.1, gap_s


def test_unevaluated_properties_read_pattern_properties_as_ecma_262() -> None:
    """jsonschema's helper that finds what patternProperties evaluated used Python's re:
    ^\\d$ took an Arabic-Indic digit, (?<n>a)\\k<n> failed every value, ^(a|a)+$ backtracked
    on the event loop's GIL."""
    for dialect in (jsonschema.Draft202012Validator, jsonschema.Draft201909Validator):
        def port(pattern: str, draft: str = dialect.META_SCHEMA["$schema"]) -> SchemaValidator:
            return validator({"$schema": draft, "type": "object",
                              "patternProperties": {pattern: {}}, "unevaluatedProperties": False})
        assert port(r"^\d$").errors({"\u0663": 1}) != []
        assert port(r"(?<n>a)\k<n>").errors({"aa": 1}) == []
        assert port("^(a|a)+$").errors({"a" * 40 + "!": 1}) != []


MANY_PATTERNS = {f"^p{i}x$": {} for i in range(1000)}


async def test_every_pattern_of_patternproperties_counts_in_the_cost() -> None:
    """Each key is tried against every pattern: 1,000 patterns by 50,000 keys held the loop
    for 2.6 s when only the costliest pattern was counted. The verdict is given elsewhere,
    within the deadline, and the loop runs on."""
    v = validator({"type": "object", "patternProperties": MANY_PATTERNS}, timeout_s=0.5)
    keys = {f"k{i}": 0 for i in range(50_000)}
    assert v._verdict_steps(len(orjson.dumps(keys))) > validation.LOOP_VERDICT_STEPS
    errors, gap_s = await _longest_loop_gap_s(v.check(keys))
    assert gap_s < 0.25, gap_s
    assert errors in ([], [{"path": "", "message": "validation did not finish within 0.5 s; "
                                                   "the value is refused"}])


async def test_a_thousand_branches_over_one_array_count_in_the_cost() -> None:
    """Each subschema may evaluate every item: an allOf of 1,000 contains over 100,000 items
    held the loop for 2.2 s when a schema of distinct subschemas counted as linear."""
    v = validator({"allOf": [{"contains": {"const": -i}} for i in range(1000)]}, timeout_s=0.5)
    items = [*range(100_000), *(-i for i in range(1000))]
    assert v._verdict_steps(len(orjson.dumps(items))) > validation.LOOP_VERDICT_STEPS
    errors, gap_s = await _longest_loop_gap_s(v.check(items))
    assert gap_s < 0.25, gap_s
    assert errors in ([], [{"path": "", "message": "validation did not finish within 0.5 s; "
                                                   "the value is refused"}])
    assert await v.check([-i for i in range(1000)]) == []  # small: still a verdict


def test_an_error_pass_stops_at_its_deadline_inside_one_keyword() -> None:
    """20,000 keys by 1,000 patterns in one patternProperties keyword: the deadline was
    checked only when a keyword began, and the pass ran on in its thread for 26 s of CPU."""
    v = validator({"type": "object", "patternProperties": MANY_PATTERNS,
                   "additionalProperties": {"type": "string"}}, timeout_s=0.3)
    keys = {f"k{i}": 0 for i in range(20_000)}
    started = time.process_time()
    assert v._errors(keys, False, time.monotonic() + 0.3) == [
        {"path": "", "message": "validation did not finish within 0.3 s; the value is refused"}]
    assert time.process_time() - started < 1.5


def test_error_paths_are_json_pointers() -> None:
    v = validator({"type": "object", "additionalProperties": {"type": "integer"}})
    errors = v.errors({"a/b": "x", "m~n": "y", "c": "z"})
    assert [e["path"] for e in errors] == ["/a~1b", "/c", "/m~0n"]


def test_format_regex_is_read_as_ecma_262_when_asserted() -> None:
    """jsonschema-rs takes any \\p{...} name; ECMA-262 (and jsonschema) refuse unknown ones."""
    v = validator({"type": "string", "format": "regex"}, format_assertion=True)
    for pattern in ("\\p{Greek}", "\\p{Script=Foo}", "[\\p{Hira}]", "(?P<n>a)"):
        assert v.errors(pattern) != [], pattern
    assert v.errors("\\p{Script=Greek}") == [] and v.errors("^a+$") == []


async def test_an_enum_holding_an_array_counts_each_entry_in_the_cost() -> None:
    """jsonschema-rs compares each item with every entry of such an enum: 50,001 entries by
    20,000 items held the loop for 9 s when enums cost nothing."""
    enum = [*(f"k{i:05}" for i in range(50_000)), [0]]
    v = validator({"type": "array", "items": {"enum": enum}}, timeout_s=0.5)
    items = ["k49999"] * 20_000
    assert v._verdict_steps(len(orjson.dumps(items))) > validation.LOOP_VERDICT_STEPS
    errors, gap_s = await _longest_loop_gap_s(v.check(items))
    assert gap_s < 0.25, gap_s
    assert errors in ([], [{"path": "", "message": "validation did not finish within 0.5 s; "
                                                   "the value is refused"}])
    assert await v.check(["k00001", [0]]) == []  # small: a verdict
    strings = validator({"type": "array", "items": {"enum": enum[:-1]}})
    assert strings._steps_per_byte == 0  # an enum of strings is a hashed lookup


async def test_the_values_of_one_call_share_one_budget_on_the_loop() -> None:
    """Six inports each just under the budget ran as one step of the loop (0.2-0.6 s)."""
    v = validator({"type": "string", "pattern": "a[ab]{20}c"})
    value = "ab" * 5_000 + "a" + "b" * 20 + "c"
    steps = v._verdict_steps(len(orjson.dumps(value)))
    assert 0 < steps < validation.LOOP_VERDICT_STEPS
    budget = validation.LoopBudget()
    for _ in range(int(validation.LOOP_VERDICT_STEPS // steps)):
        assert await v.check(value, budget) == []
    assert budget.left < steps  # the next value's verdict is given elsewhere
    assert await v.check(value, budget) == []


def test_a_long_format_regex_value_is_refused_before_it_is_compiled() -> None:
    """RE2 compiles \\p{L} classes slowly and holds the GIL: 13,107 of them took 1.5 s."""
    v = validator({"type": "string", "format": "regex"}, format_assertion=True)
    started = time.process_time()
    assert v.errors("\\p{L}" * 13_107)[0]["message"].endswith(
        "is too large a 'regex' to check: at most 256 characters and 8 \\p{...} classes")
    assert v.errors("\\p{L}" * 9) != [] and v.errors("\\p{L}" * 8) == []
    assert v.errors("a" * 256) == [] and v.errors("a" * 257) != []
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(("schema", "value", "valid"), [
    ({"properties": {"d": {"format": "date"}}}, {"d": "0000-01-01"}, False),  # both engines
    ({"properties": {"d": {"format": "date"}, "x": {"pattern": "^(?!z)"}}},
     {"d": "0000-01-01"}, False),
    ({"$schema": "http://json-schema.org/draft-04/schema#", "format": "date"},
     "2020-02-30", True),  # draft 4 defines no date: an annotation there
    ({"format": "date"}, "2020-02-30", False)])
def test_an_asserted_formats_verdict_does_not_depend_on_the_rest_of_the_schema(
        schema: dict[str, Any], value: Any, valid: bool) -> None:
    """With format assertion, `0000-01-01` was a date alone (jsonschema-rs's verdict) and not
    one beside an unrelated lookaround (jsonschema's, with both engines)."""
    v = validator(schema, format_assertion=True)
    assert (v.errors(value) == []) is valid


def test_a_subschema_of_another_dialect_is_refused_at_load() -> None:
    """jsonschema reads an embedded resource in its own $schema's dialect, jsonschema-rs in
    the root's: `dependencies` of a draft-07 part was ignored (a value accepted that the
    reference refuses). Refused, as a referenced file of another dialect is."""
    d7 = "http://json-schema.org/draft-07/schema#"
    schema = {"$defs": {"d7": {"$schema": d7, "$id": "http://e/d7",
                               "dependencies": {"a": ["b"]}}}, "$ref": "http://e/d7"}
    compiled, issues = compile_schema(schema, Path("/nonexistent/actor.yaml"))
    assert compiled is None
    assert [(i.pointer, i.message) for i in issues] == [
        ("/$defs/d7/$schema", "a subschema's $schema other than the schema's own is not "
                              "supported: keep one dialect per schema")]
    same = {"$defs": {"d": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}}
    assert compile_schema(same, Path("/nonexistent/actor.yaml"))[0] is not None


def test_errors_come_in_the_order_of_their_items() -> None:
    v = validator({"type": "array", "items": {"type": "integer"}})
    assert [e["path"] for e in v.errors(["x"] * 12)] == [f"/{i}" for i in range(12)]
