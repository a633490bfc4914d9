"""Patterns read as ECMA-262 says (with the u flag, as JSON Schema's suite reads them), on
both engines, and what ECMA-262 refuses refused when the manifest loads."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import re2
import regex
from jsonschema import Draft4Validator, Draft202012Validator

from service.manifest import ecma
from service.manifest.loader import load_manifest
from service.manifest.validation import SchemaValidator
from service.settings import Settings
from tests.manifest.test_manifest_loader import BASE, messages, write

# (pattern, text, whether it matches somewhere), one rule of ECMA-262's RegExp per group.
MATCHES = [
    # CharacterClassEscape: \d and \w are ASCII; \s is WhiteSpace and LineTerminator
    (r"^\d+$", "0129", True), (r"^\d$", "\u0664", False), (r"^\D$", "\u07c0", True),
    (r"^\w+$", "aZ0_", True), (r"^\w$", "\u00e9", False), (r"^\W$", "\u00e9", True),
    (r"^\s$", "\u000b", True), (r"^\s$", "\u00a0", True), (r"^\s$", "\u2003", True),
    (r"^\s$", "\u2029", True), (r"^\s$", "\ufeff", True), (r"^\s$", "\u0085", False),
    (r"^\s$", "\u200b", False), (r"^\S$", "\u000b", False), (r"^\S$", "\u3000", False),
    (r"^\S$", "\u0085", True),
    # . is any code point but a LineTerminator (an astral one is one code point)
    (r"^.$", "\r", False), (r"^.$", "\n", False), (r"^.$", "\u2028", False),
    (r"^.$", "\u0085", True), (r"^.$", "\U0001f600", True),
    # ^ and $ are the ends of the input (no m flag): $ does not match before a final \n
    (r"^abc$", "abc\n", False), (r"^abc$", "abc", True), (r"b$", "ab", True),
    (r"^b", "ab", False),
    # \b and \B: boundaries between ASCII word characters and the rest
    (r"\bfoo", "\u00e9foo", True), (r"x\B\u00e9", "x\u00e9", False),
    (r"x\b\u00e9", "x\u00e9", True), (r"\Bx", "ax", True), (r"\bx\b", "a x b", True),
    (r"A*\B", "_\u3000_", False), (r"\B", "\u3000\u3000", True),
    # CharacterEscape: control escapes, \c, \0, \x, \u (pairs joined), \u{...}, identity
    (r"^\t\n\v\f\r$", "\t\n\x0b\x0c\r", True), (r"^\cJ$", "\n", True), (r"^\ca$", "\x01", True),
    (r"^\0$", "\x00", True), (r"^\x41$", "A", True), (r"^\u00e9$", "\u00e9", True),
    (r"^\ud83d\ude00$", "\U0001f600", True), (r"^\u{1F600}$", "\U0001f600", True),
    # a pair only when both halves are \uXXXX: else two lone surrogates, as node reads them
    (r"^\ud83d\u{de00}$", "\U0001f600", False), (r"^\u{d83d}\ude00$", "\U0001f600", False),
    (r"^\/\.\$\{\}$", "/.${}", True), (r"^\.$", "a", False),
    # CharacterClass: [] matches nothing, [^] anything; \b is a backspace; ranges
    (r"^[]$", "", False), (r"^a[]", "a", False), (r"^[^]$", "\n", True), (r"^[\b]$", "\x08", True),
    (r"^[a-c]+$", "abc", True), (r"^[a-c]+$", "abd", False), (r"^[-a]$", "-", True),
    (r"^[a-]$", "-", True), (r"^[\]]$", "]", True), (r"^[\d-z]$", "-", True),
    (r"^[\s]$", "\u00a0", True), (r"^[\S]$", "\u00a0", False), (r"^[^\s]$", "\u00a0", False),
    (r"^[a\S]$", "a", True), (r"^[\w\s]+$", "a b\u3000", True),
    (r"^[\ud83d\ude00]$", "\U0001f600", True),
    (r"^[\u{1F600}-\u{1F64F}]$", "\U0001f610", True), (r"^[^a]$", "\n", True),
    # Unicode property escapes: General_Category by any alias, scripts, binary properties
    (r"^\p{L}+$", "\u00e9cole", True), (r"^\p{Letter}+$", "\u00e9cole", True),
    (r"^\p{gc=Lu}$", "A", True), (r"^\p{General_Category=Decimal_Number}+$", "\u09ea\u09e8", True),
    (r"^\p{digit}+$", "\u09ea\u09e8", True), (r"^\P{L}$", "1", True), (r"^\P{L}$", "a", False),
    (r"^\p{Script=Greek}$", "\u03b1", True), (r"^\p{sc=Grek}$", "\u03b1", True),
    (r"^\p{scx=Greek}$", "\u03b1", True), (r"^\p{ASCII}$", "\u00e9", False),
    (r"^[^\p{L}\P{L}]$", "a", False), (r"^[\P{L}\p{L}]$", "1", True), (r"^\p{Any}$", "a", True),
    (r"^\p{LC}$", "a", True), (r"^\P{C}$", "\u0378", False), (r"^\p{C}$", "\U0010ffff", True),
    (r"^[\p{Lu}\d]+$", "A1", True), (r"^[^\p{Lu}]$", "A", False),
    # Groups, quantifiers, backreferences and lookarounds
    (r"^(?:ab)+$", "abab", True), (r"^(?<year>\d{4})-\k<year>$", "2024-2024", True),
    ("^(?<\u00e9t\u00e9>a)\\k<\u00e9t\u00e9>$", "aa", True), (r"^(?<$a_1>a)\k<$a_1>$", "aa", True),
    (r"^(a)\1$", "aa", True), (r"^(a)\1$", "ab", False), (r"(a)|\1b", "b", True),
    (r"^a{2,3}$", "aaaa", False), (r"^a{2,}?$", "aaaa", True), (r"a(?=b)", "ab", True),
    (r"a(?!b)", "ab", False), (r"(?<=a)b", "ab", True), (r"(?<!a)b", "ab", False),
    # Modifiers (ECMA-262 2025): a case-insensitive group
    (r"^(?i:ab)c$", "ABc", True), (r"^(?i:ab)c$", "ABC", False), (r"^(?i:a(?-i:b))$", "AB", False),
    (r"^(?i:\u00e9)$", "\u00c9", True),
]

# (pattern, words of the reason) for text that is not an ECMA-262 pattern with the u flag
REFUSED = [
    ("{", "must be escaped"), ("a{,3}", "must be escaped"), (r"\c1", r"\c must be followed"),
    ("(?i)a", "no (?i) for the rest of the pattern"), ("(?s:a)", "'(?' starts no"),
    ("(?P<x>a)", "'(?' starts no ECMA-262 group"),
    (r"\k<x>", "names a group the pattern does not have"),
    (r"\2(a)", "names a group the pattern does not have"), (r"\z", r"\z is not an escape"),
    (r"\A", r"\A is not an escape"), (r"\01", r"\0 is not an escape"), ("[b-a]", "out of order"),
    ("(", "missing )"), ("[a", "not closed"), ("[a-", "not closed"), ("a\\", "lone backslash"),
    (r"\p{gc=Nope}", r"bad property \p{gc=Nope}"), (r"\p{Nope}", "unknown property"),
    (r"\x4", "2 hex digits"), (r"\u12", "4 hex digits"), (r"\u{110000}", "at most 10FFFF"),
    (r"\p{Greek}", r"unknown property \p{Greek}"), (r"\p{letter}", "unknown property"),
    (r"\p{lu}", "unknown property"), (r"\p{IsGreek}", "unknown property"),
    (r"\p{Script=greek}", "bad property"), (r"\p{gc=}", "unknown property"),
    (r"\p{Script}", "unknown property"), ("\\\u00e9", "is not an escape"),
    ("a**", "nothing to repeat: it follows no atom"), ("(*a)", "it follows no atom"),
    ("^*", "an assertion cannot be repeated"), (r"a\b+", "an assertion cannot be repeated"),
    ("(?=a)*", "an assertion cannot be repeated"), ("(?<!a){2}", "an assertion cannot be"),
]


def _matches(compiled: Any, text: str) -> bool:
    return compiled.search(text) is not None


@pytest.mark.parametrize(("pattern", "text", "expected"), MATCHES)
def test_a_pattern_matches_as_ecma_262_says(pattern: str, text: str, expected: bool) -> None:
    assert _matches(ecma.compiled(pattern), text) is expected


@pytest.mark.parametrize(("pattern", "text", "expected"), MATCHES)
def test_both_engines_read_a_pattern_alike(pattern: str, text: str, expected: bool) -> None:
    """The backtracking engine takes every pattern, RE2 all but those it lacks features for:
    whichever one a pattern lands on, it matches the same texts."""
    assert _matches(regex.compile(ecma.translate(pattern, backtracking=True)), text) is expected
    try:
        translated = ecma.translate(pattern, backtracking=False)
    except ecma.NeedsBacktracking:
        return
    options = re2.Options()
    options.log_errors = False
    try:
        compiled = re2.compile(translated, options)
    except re2.error:  # \p{Grek}: RE2 knows scripts by their long names only
        return
    assert _matches(compiled, text) is expected


def test_linear_time_patterns_stay_on_re2() -> None:
    for pattern in (r"^\S+$", r"^.{1,1000}$", r"^\p{Letter}+$", r"^[\d-z]$", r"(?<y>\d)x"):
        assert isinstance(ecma.compiled(pattern), re2._Regexp), pattern
    for pattern in (r"(a)\1", "a(?=b)", r"\p{LC}", r"\p{ASCII}", r"a\B"):
        assert not isinstance(ecma.compiled(pattern), re2._Regexp), pattern


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_what_ecma_262_refuses_is_refused_saying_why(pattern: str, why: str) -> None:
    with pytest.raises(ecma.PatternError, match=regex.escape(why)):
        ecma.compiled(pattern)


def test_ports_validate_with_ecma_262_patterns() -> None:
    """Both of the port's engines: jsonschema-rs for the verdict, jsonschema for the errors."""
    port = SchemaValidator({"type": "object", "properties": {"s": {"pattern": r"^\S+$"}},
                            "patternProperties": {r"^\p{Lu}": {"type": "integer"}}},
                           Draft202012Validator)
    assert port.errors({"s": "a\u00a0b"}) == [
        {"path": "/s", "message": "'a\\xa0b' does not match '^\\\\S+$'"}]
    assert port.errors({"s": "\u00e9\u00e9", "\u00c9t\u00e9": 1}) == []
    assert port.errors({"\u00c9t\u00e9": "x"}) == [
        {"path": "/\u00c9t\u00e9", "message": "'x' is not of type 'integer'"}]
    dotted = SchemaValidator({"pattern": "^.$"}, Draft202012Validator)
    assert dotted.errors("\r") != [] and dotted.errors("\u00e9") == []


def test_word_boundaries_leave_the_verdict_to_jsonschema() -> None:
    """jsonschema-rs's \\b and \\B see Unicode letters as word characters: it would accept
    'xé' against x\\Bé, which ECMA-262's ASCII word characters refuse."""
    bounded = SchemaValidator({"pattern": r"x\B\u00e9"}, Draft202012Validator)
    assert bounded._fast is None
    assert bounded.errors("x\u00e9") != []
    escaped = SchemaValidator({"pattern": r"\\bx"}, Draft202012Validator)  # "\\" then "bx"
    assert escaped._fast is not None


def test_format_regex_is_ecma_262_when_asserted() -> None:
    port = SchemaValidator({"format": "regex"}, Draft202012Validator, format_assertion=True)
    assert port.errors(r"^\p{Letter}\cJ$") == []
    assert port.errors("(?i)x") == [{"path": "", "message": "'(?i)x' is not a 'regex'"}]


def test_a_manifest_loads_ecma_262_patterns_that_python_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema:\n"
                 "      pattern: '^\\cJ\\p{Letter}(?<n>a)\\k<n>$'\n")
    port = load_manifest(path, Settings()).inports["x"]
    assert port.errors("\n\u00e9aa") == [] and port.errors("\n1aa") != []


def test_every_pattern_is_checked_at_load_in_every_draft(tmp_path: Path) -> None:
    """Draft 4's metaschema does not check the names of patternProperties: a bad one loaded,
    then every object with a property was refused ("jsonschema could not check the value")."""
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema:\n"
                 "      $schema: 'http://json-schema.org/draft-04/schema#'\n"
                 "      patternProperties: {'(': {type: integer}}\n")
    assert messages(path) == ["inports.x.schema.patternProperties: '(' is not a 'regex': missing )"]


def test_a_refused_pattern_says_why_at_its_place(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema: {pattern: 'a\\z'}\n")
    assert messages(path) == ["inports.x.schema.pattern: 'a\\\\z' is not a 'regex': \\z is "
                              "not an escape of ECMA-262 regular expressions (at character 3)"]


def test_what_the_backtracking_engine_cannot_hold_is_refused() -> None:
    """regex expands counted repetitions: (?:(?:a{1000}){1000}){1000} (28 characters, which
    RE2 refuses) went on to 3 GB; 320 nested groups overflowed its parser's stack."""
    with pytest.raises(ecma.PatternError, match="more than 100000 copies"):
        ecma.compiled("(?:(?:a{1000}){1000}){1000}")
    with pytest.raises(ecma.PatternError, match="more than 100000 copies"):
        ecma.compiled(r"(a{1000}){1000}\1")
    assert not isinstance(ecma.compiled("(a{100}){1000}"), re2._Regexp)
    with pytest.raises(ecma.PatternError, match="nested too deeply"):
        ecma.compiled("(?=a)" + "(" * 400 + "a" + ")" * 400)
    with pytest.raises(ecma.PatternError, match="too large for the backtracking engine"):
        ecma.compiled("\\B" + "\\S" * 32767)


def test_a_class_of_many_ranges_translates_in_linear_time() -> None:
    """Each range used to be taken out of a list again (21,844 ranges: 6.6 s)."""
    started = time.perf_counter()
    ecma.translate("[" + "a-b" * 21844 + "]", backtracking=False)
    assert time.perf_counter() - started < 2.0


def test_a_pattern_is_at_most_64_k_characters() -> None:
    ecma.compiled("a" * ecma.MAX_PATTERN_CHARS)
    with pytest.raises(ecma.PatternError, match="longer than 65536 characters"):
        ecma.check("a" * (ecma.MAX_PATTERN_CHARS + 1))


def test_a_lone_surrogate_is_a_code_point_as_any_other() -> None:
    """A frame may hold "\\ud800" (json reads it); RE2 reads UTF-8 only: such a text was
    refused with "could not check the value (UnicodeEncodeError)" and a logged traceback."""
    port = SchemaValidator({"type": "object", "properties": {"s": {"pattern": r"^a\S$"}},
                            "patternProperties": {"^x": {"type": "integer"}}},
                           Draft202012Validator)
    assert port.errors({"s": "a\ud800", "x\udfff": 1}) == []
    assert port.errors({"s": "b\ud800", "x\udfff": "no"}) == [
        {"path": "/s", "message": "'b\\ud800' does not match '^a\\\\S$'"},
        {"path": "/x\udfff", "message": "'no' is not of type 'integer'"}]


def test_a_lead_surrogate_joins_only_a_trail_one_written_as_itself() -> None:
    r"""\ud83d\u{de00} is two lone surrogates (node reads it so), not a pair: it was refused
    ("expected 4 hex digits"). Texts holding lone surrogates match on the backtracking engine."""
    port = SchemaValidator({"type": "array", "items": [{"pattern": r"^\ud83d\u{de00}$"},
                                                       {"pattern": r"^\ud83d\u0041$"}]},
                           Draft4Validator)
    assert port.errors(["\ud83d\ude00", "\ud83dA"]) == []  # (a Python str: two code points)
    assert [e["path"] for e in port.errors(["\U0001f600", "A"])] == ["/0", "/1"]


@pytest.mark.parametrize(("pattern", "problem"), [
    (r"a\z", r"\z is not an escape"), ("(", "missing )")])
def test_patterns_a_reference_makes_a_schema_of_are_checked(tmp_path: Path, pattern: str,
                                                             problem: str) -> None:
    """{"$ref": "#/$defs/a/const"} validates with the const: its patterns are a schema's."""
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema:\n"
                 "      $ref: '#/$defs/a/const'\n"
                 f"      $defs: {{a: {{const: {{pattern: '{pattern}'}}}}}}\n")
    [message] = messages(path)
    assert message.startswith("inports.x.schema.$defs.a.const.pattern: ") and problem in message


def test_word_boundaries_a_reference_reaches_leave_the_verdict_to_jsonschema() -> None:
    port = SchemaValidator({"$ref": "#/$defs/a/const", "$defs": {"a": {"const": {
        "pattern": r"\Bx"}}}}, Draft202012Validator)
    assert port._fast is None and port.errors("\u00e9x") != []
