"""Validating values against a port's compiled schema: exact, bounded in cost, fast.

Two engines compile the same (bundled, self-contained) schema once, at load:

- jsonschema-rs gives the verdict. It is fast (a number in well under a
  microsecond, a 50-item order in microseconds) and bounded: ``pattern`` runs on
  its linear-time engine (a schema with a lookaround or a backreference has no
  verdict here: jsonschema decides), and ``uniqueItems`` and
  ``multipleOf`` are the server's (verdicts.all_distinct, :func:`multiple_of`),
  called from Rust.
- jsonschema, the reference implementation, writes the error messages and paths
  (docs/protocol.md) for a value the first one refused, and has the last word:
  a value it accepts is accepted. Its costly keywords are replaced by bounded
  ones (``pattern``, ``patternProperties`` and ``additionalProperties`` on RE2,
  a linear-time engine, or on ``regex`` with a timeout for the lookarounds and
  backreferences RE2 lacks; ``uniqueItems`` by hashing), and every keyword checks
  a deadline, so a hostile value costs at most ``timeout_s``.

During a call, :meth:`SchemaValidator.check` runs the verdict on the event loop and
the error pass in a verdict process (verdicts.py: jsonschema is Python, and in a thread
of the server it took the interpreter from the loop 5 ms at a time), so no value stalls
other connections. Every keyword of the verdict costs a few tens of nanoseconds per
value node, except those jsonschema-rs calls back in Python (``multipleOf``: up to a few
µs, exact past a float's range; ``uniqueItems``; formats it does not check as jsonschema
does): the verdict of a schema that has them, on a container of more than
LOOP_VERDICT_BYTES, is given in a verdict process too. Patterns and nested
``unevaluated*`` keywords cost more per node: where a value's verdict could cost more
than LOOP_VERDICT_STEPS, so is it, within the check's deadline, and the loop goes on
meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from typing import Any

import jsonschema._legacy_keywords
import jsonschema._utils
import orjson
import re2
from jsonschema import FormatChecker, validators
from jsonschema.exceptions import FormatError, ValidationError
from jsonschema.protocols import Validator
from referencing import Registry, Resource

from service import jsonfast
from service.jsonfast import weight
from service.log import RateLimit
from service.manifest import ecma, verdicts
from service.manifest.schemawalk import (
    evaluations,
    node_patterns,
    nodes,
    reachable_nodes,
    specification_of,
    unevaluated_depth,
)
from service.manifest.verdicts import RUST_CLASSES, all_distinct, multiple_of, rust_validator

log = logging.getLogger(__name__)

MAX_ERRORS = 50  # per value: a 10,000-item array of wrong types is not 10,000 messages
# per message: one that quotes a 1 MB value is cut (50 of them would make a 50 MB answer)
MAX_MESSAGE_CHARS = 1000
MAX_PATH_CHARS = 4096  # a path 2,000 levels deep fits
QUOTE_CHARS = 900  # of a value quoted in a message: the message fits in 1000
MAX_EXTRAS_NAMED = 64  # unexpected property names: past this many, counted (_extras_message)
# A value whose JSON is longer has its large parts quoted by their beginning (_quotable)
QUOTING_VALUE_CHARS = 16 << 10
# all paths and messages of one value (the first error is always kept): 50 errors at the
# path of one 1 MB object key would make a 50 MB answer too
MAX_ERRORS_CHARS = 64 << 10
# The waits for verdict processes (and the error passes they cannot take) run on threads of
# their own, never the loop's default executor, which boots sandboxes: a flood of values
# that are slow to explain must not delay another caller's sandbox. Queued passes whose
# deadline went by return at once.
_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="validation")
# The largest container (as JSON text) whose multipleOf verdict runs on the event loop:
# ~10 ms at the worst of a few µs per number.
LOOP_VERDICT_BYTES = 16 << 10
# The most steps the verdicts of one call's values may cost on the event loop, together
# (LoopBudget): ~7 ms at jsonschema-rs's worst measured, ~7 ns a step (``a[ab]{20}c``). A
# step: one character of a value through one step of a pattern's program, one byte of a
# value through one evaluation (see UNEVALUATED_GROWTH), or through one entry of an enum
# holding arrays or objects.
LOOP_VERDICT_STEPS = 1_000_000
# With format assertion on, a `format: regex` value is compiled by RE2, which holds the GIL
# (~30 µs per class like . or \S, ~0.5 ms per \p{...}): longer ones are refused
MAX_FORMAT_REGEX_CHARS = 256
MAX_FORMAT_REGEX_PROPERTIES = 8  # \p{...} and \P{...} classes in one such value
# Nested unevaluatedProperties / unevaluatedItems evaluate what lies below them again, and
# jsonschema-rs holds the GIL meanwhile: beside an anyOf, a verdict's cost grows ~2-2.7x at
# each level, for the schema's own work as for the value's (12 levels: 50 ms for a 16-byte
# value; 16 levels: a minute for 39 KB). Below more than one level, a verdict counts
# (its value's steps + UNEVALUATED_BASE_STEPS) x UNEVALUATED_GROWTH ** levels: within
# ~1.5x of what 8 to 12 levels took here, above it for big values.
UNEVALUATED_GROWTH = 2.7
UNEVALUATED_BASE_STEPS = 300  # the schema's own work at each evaluation
# A schema that reaches one definition along many paths evaluates a location once per path
# (schemawalk.evaluations): 2**24 times for 24 levels of two references, 0.4 s for a
# one-character value, GIL held. Up to as many evaluations of a location as the schema has
# subschemas (32 at least), a verdict counts as linear: that is what a schema as written
# costs (a oneOf of 40 event types, each with its own parts; no schema of the JSON Schema
# Test Suite counts more than 11, the 2020-12 metaschema 8). Past it, each one counts.
FREE_EVALUATIONS = 32
# Tried on every object, each entry: they cost the verdict as many steps per byte
DEPENDENCY_KEYWORDS = ("dependentRequired", "dependentSchemas", "dependencies")
# uniqueItems's steps per byte (verdicts._RustUniqueItems: Python objects made of the array,
# then hashed): a value past ~30 KB is judged in the verdict process
UNIQUE_ITEMS_STEPS = 32
# see _Formats; jsonschema-rs's `regex` takes any \p{...} name, ECMA-262 refuses unknown ones
LAX_RUST_FORMATS = frozenset({"idn-hostname", "idn-email", "regex"})
# The formats each dialect defines: only those are asserted (jsonschema-rs asserts `date` in
# a draft 4 schema, which has none; jsonschema leaves it an annotation there)
_DRAFT4_FORMATS = frozenset({"date-time", "email", "hostname", "ipv4", "ipv6", "uri"})
_DRAFT6_FORMATS = _DRAFT4_FORMATS | {"uri-reference", "uri-template", "json-pointer"}
_DRAFT7_FORMATS = _DRAFT6_FORMATS | {"date", "time", "idn-email", "idn-hostname", "iri",
                                     "iri-reference", "relative-json-pointer", "regex"}
DIALECTS = {specification_of(cls).name: cls for cls in (
    jsonschema.Draft4Validator, jsonschema.Draft6Validator, jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator, jsonschema.Draft202012Validator)}
DIALECT_FORMATS = {"draft-04": _DRAFT4_FORMATS, "draft-06": _DRAFT6_FORMATS,
                   "draft-07": _DRAFT7_FORMATS,
                   "draft2019-09": _DRAFT7_FORMATS | {"duration", "uuid"},
                   "draft2020-12": _DRAFT7_FORMATS | {"duration", "uuid"}}
# The largest value (JSON bytes, times its schema's cost per byte) whose error list is
# written in the server: jsonschema's pass takes ~1 µs per byte, a few ms here.
ERRORS_HERE_STEPS = 4 << 10
DEADLINE_SLACK_S = 0.5  # past timeout_s, the wait for an error pass that cannot stop itself
# The deadline of the error pass running in this context (None: none).
_DEADLINE: ContextVar[float | None] = ContextVar("validation_deadline", default=None)
# id -> (value, what keywords get instead) in one error pass over a large value; None: none
_STAND_INS: ContextVar[dict[int, tuple[Any, Any]] | None] = ContextVar("stand_ins",
                                                                       default=None)
# A jsonschema failure is logged with its traceback once per interval per exception type:
# every value a client sends can meet the same failure again.
_FAILURES = RateLimit(60.0)

Errors = list[dict[str, str]]


class ValidationTimeout(Exception):
    """The error pass of one value ran past its deadline."""


@dataclass
class LoopBudget:
    """What the verdicts of one call's values may still cost on the event loop, in steps:
    six inports each just under the budget took the loop for 0.2-0.6 s in one go."""

    left: float = LOOP_VERDICT_STEPS


class SchemaValidator:
    """One schema, compiled for jsonschema-rs (the verdict) and jsonschema (the errors)."""

    def __init__(self, schema: Any, dialect: type[Validator], format_assertion: bool = False,
                 timeout_s: float = 1.0) -> None:
        begun = time.monotonic()
        self.schema = schema
        self.dialect = dialect
        self.timeout_s = timeout_s
        self._python = _python_validator(schema, dialect, format_assertion)
        spec = specification_of(dialect)
        reached = list(reachable_nodes(schema, spec))
        found = [p for node in reached for _, p in node_patterns(node)]
        # jsonschema-rs would accept a value ECMA-262's ASCII word boundaries refuse; with
        # format assertion, a host name IDNA2008 refuses, and a format jsonschema checks too
        # is asserted only where both accept (_Formats), one the dialect does not define not
        # at all: jsonschema-rs calls back _Formats for those (format_checks; such schemas
        # were left to jsonschema alone, which ran out of time on values of megabytes)
        self._fast = None if any(map(ecma.asserts_word_boundaries, found)) \
            else rust_validator(schema, spec.name, format_assertion)
        # keywords jsonschema-rs calls back in Python (multipleOf, uniqueItems, formats)
        self._calls_python = self._fast is not None and any(
            "multipleOf" in node.contents or node.contents.get("uniqueItems") is True
            or (format_assertion and _lax_format(node.contents.get("format"), dialect))
            for node in reached)
        # Every pattern may read each character once: patternProperties tries each key
        # against all of its patterns (1,000 of them, a 539 KB object: 6 s, GIL held).
        # jsonschema-rs compares a value with every entry of an enum that holds an array or
        # an object (50,001 entries, 20,000 items: 9 s, GIL held).
        # So does it try every entry of dependentRequired, dependencies and dependentSchemas
        # on every object (300 entries, 330,000 empty objects: 0.5 s). uniqueItems, called
        # back in Python, gets the array written out as Python objects, in one call that holds
        # the GIL: UNIQUE_ITEMS_STEPS per byte sends a large one to the verdict process.
        self._steps_per_byte = sum(map(ecma.cost, found)) + sum(
            len(entries) for node in reached
            if isinstance(entries := node.contents.get("enum"), list)
            and any(isinstance(entry, list | dict) for entry in entries)) + sum(
            len(entries) for node in reached for keyword in DEPENDENCY_KEYWORDS
            if isinstance(entries := node.contents.get(keyword), dict)) + (
            UNIQUE_ITEMS_STEPS if any(node.contents.get("uniqueItems") is True
                                      for node in reached) else 0)
        # Past FREE_EVALUATIONS subschemas, each may evaluate every location once (an allOf
        # of 1,000 contains, each over every item of a 100,000-item array: 2 s, GIL held)
        self._breadth = len(reached) if len(reached) > FREE_EVALUATIONS else 1
        nesting = unevaluated_depth(schema, spec)
        paths, reentries = evaluations(schema, spec)
        # how many times a value may be evaluated, at worst (1: once, in linear time)
        self._evaluations = (UNEVALUATED_GROWTH ** nesting if nesting > 1 else 1) * (
            paths if paths > max(FREE_EVALUATIONS, len(reached)) else 1)
        # jsonschema-rs's error list evaluates every branch of an anyOf or a oneOf, each
        # level of a recursion again (2**16 times for 16 levels of [[...]] against two
        # branches that recurse: 31 s, GIL held): it stands in for jsonschema's only where
        # its cost is linear
        self._linear_errors = self._evaluations == 1 and reentries < 2
        # what names this schema to the verdict processes (verdicts.py): for its errors, and
        # for its verdicts where jsonschema-rs has any
        self._explainer_key = verdicts.schema_key(schema, spec.name, format_assertion)
        self._key = None if self._fast is None else self._explainer_key
        # A verdict process compiles the schema on its first value, as the server did here:
        # not counted against that value's deadline, it may take twice as long at nice 10
        self._cold_s = 2 * (time.monotonic() - begun)

    def is_valid(self, value: Any) -> bool | None:
        """The fast verdict: True, False, or None when jsonschema-rs has none to give."""
        if self._fast is None:
            return None
        try:
            return bool(self._fast.is_valid(value))
        except Exception:  # a value it cannot take (inf, NaN): jsonschema decides
            return None

    def errors(self, value: Any) -> Errors:
        """Every way ``value`` fails (at most MAX_ERRORS), computed here and now: the same
        as :meth:`check`, in the calling thread (the loader's, for a manifest's examples)."""
        deadline = time.monotonic() + self.timeout_s
        costly = self._json_if_costly(value)
        if costly is not None and self._verdict_steps(costly[0]) > LOOP_VERDICT_STEPS:
            verdict = self._verdict_elsewhere(value, deadline, _Line(value, costly[1]))
        else:
            verdict = self.is_valid(value)
        if verdict:
            return []
        return self._errors(value, verdict, deadline)

    async def check(self, value: Any, budget: LoopBudget | None = None) -> Errors:
        """Like :meth:`errors`, with the error pass (and a costly verdict) off the event loop,
        and refused once ``timeout_s`` has passed. ``budget``: what the call's verdicts may
        still cost the loop (shared by its values); a fresh one when None."""
        deadline = time.monotonic() + self.timeout_s
        line = _Line(value)  # written for a verdict process at most once
        verdict = await self._verdict(value, deadline, budget, line)
        if verdict:
            return []
        try:
            return await asyncio.wait_for(_off_loop(self._errors_elsewhere, value, verdict,
                                                    deadline, line),
                                          deadline - time.monotonic() + DEADLINE_SLACK_S
                                          + self._cold_s)
        except TimeoutError:  # one RE2 search cannot be stopped: its thread finishes alone
            return self._unfinished()

    def _errors_elsewhere(self, value: Any, verdict: bool | None, deadline: float,
                          line: _Line | None = None) -> Errors:
        """:meth:`_errors`, run by a verdict process where it could cost the loop. The pass
        is Python: in a thread of the server, it takes the interpreter from the event loop
        5 ms at a time (its switch interval), so every callback of the loop that gives it
        up (a read, a write) waited that long for it again (eight 1.1 MB objects held
        /healthz 280-440 ms). Here, in the calling thread: a value small enough to explain
        in a few ms (the verdict processes, one per CPU, may be busy with costly ones), one
        the process cannot take (nested too deeply to write), a schema it cannot explain."""
        if time.monotonic() >= deadline:  # it waited for a thread past its deadline
            return self._fallback_errors(value, verdict, self._unfinished_why())
        text = (line or _Line(value)).get()
        if self._explainer_key is None or text is None or self._errors_here(len(text[0])):
            return self._errors(value, verdict, deadline)
        answer = verdicts.VERDICTS.errors(self._explainer_key, text, verdict, self.timeout_s,
                                          deadline, DEADLINE_SLACK_S / 2 + self._cold_s)
        if answer == verdicts.NO_ANSWER:
            return self._errors(value, verdict, deadline)
        found = None if answer is None else _error_list(answer)
        if found is None:  # no process free by the deadline, or it did not stop in time
            return self._fallback_errors(value, verdict, self._unfinished_why())
        return found

    def _errors_here(self, size: int) -> bool:
        """Is jsonschema's pass over a value of ``size`` bytes of JSON cheap enough to run in
        the server (ERRORS_HERE_STEPS)?"""
        return self._fast is not None and self._linear_errors \
            and size * max(self._steps_per_byte, 1) * self._breadth <= ERRORS_HERE_STEPS

    def _unfinished_why(self) -> str:
        return f"validation did not finish within {self.timeout_s:g} s"

    def _unfinished(self) -> Errors:
        return [{"path": "", "message": f"{self._unfinished_why()}; the value is refused"}]

    async def _verdict(self, value: Any, deadline: float, budget: LoopBudget | None = None,
                       line: _Line | None = None) -> bool | None:
        """jsonschema-rs's verdict, where it costs the event loop little. Its linear-time
        patterns still take up to ~1.4-7 ns per character per step of their program
        (``a[^c]{1000}c`` on 1 MB of text: 13 s), nested ``unevaluated*`` keywords evaluate a
        value again at each level, and it holds the GIL: for a value that could cost more
        than what ``budget`` (the call's) has left of LOOP_VERDICT_STEPS, and for a large
        value where it calls back Python, the verdict process gives it by ``deadline``, or
        none comes and jsonschema decides (off the loop, by the same deadline)."""
        costly = self._json_if_costly(value)
        if costly is None:
            return self.is_valid(value)
        size, text = costly
        line = line or _Line(value)
        line.text = text
        steps = self._verdict_steps(size)
        budget = budget or LoopBudget()
        if steps > budget.left:
            return await _off_loop(self._verdict_elsewhere, value, deadline, line)
        budget.left -= steps
        if self._calls_python and size > LOOP_VERDICT_BYTES:  # Python, called from Rust
            return await _off_loop(self._verdict_elsewhere, value, deadline, line)
        return self.is_valid(value)

    def _json_if_costly(self, value: Any) -> tuple[int, bytes | None] | None:
        """``value``'s size and text as compact JSON (see _json) where jsonschema-rs's
        verdict on it may be costly; None: cheap. Repeated evaluations cost even a number."""
        if self._fast is None:
            return None
        if self._evaluations > 1 or (
                (self._steps_per_byte or self._calls_python or self._breadth > 1)
                and isinstance(value, str | dict | list)):
            return _json(value)
        return None

    def _verdict_elsewhere(self, value: Any, deadline: float,
                           line: _Line | None = None) -> bool | None:
        """A verdict process's verdict on ``value`` (``line``: what it is sent as): what
        jsonschema-rs would say here; None: none by ``deadline``, or a schema it has not
        compiled, or a value nested too deeply to send."""
        sent = (line or _Line(value)).get()
        if self._key is None or sent is None:
            return None
        return verdicts.VERDICTS.verdict(self._key, sent, deadline + self._cold_s)

    def _cheap(self, value: Any) -> bool:
        """Would jsonschema-rs's work on ``value`` cost the loop no more than its verdict may?"""
        costly = self._json_if_costly(value)
        return costly is None or self._verdict_steps(costly[0]) <= LOOP_VERDICT_STEPS

    def _verdict_steps(self, size: int) -> float:
        """What jsonschema-rs's verdict may cost for a value of ``size`` bytes, in steps."""
        if self._evaluations == 1 and self._breadth == 1:
            return size * self._steps_per_byte
        return (size * max(self._steps_per_byte, 1) * self._breadth
                + UNEVALUATED_BASE_STEPS) * self._evaluations

    def _errors(self, value: Any, verdict: bool | None, deadline: float) -> Errors:
        """jsonschema's errors: the reference has the last word on a value refused above.

        jsonschema-rs refuses a few values jsonschema accepts (non-finite floats, which
        Python's json reads; it sees them as null), so none of its refusals stands alone.
        """
        token = _DEADLINE.set(deadline)
        quoting = _STAND_INS.set({} if _long(value) else None)
        try:
            found = list(islice(self._python.iter_errors(_quotable(value)), MAX_ERRORS))
        except ValidationTimeout:
            return self._fallback_errors(value, verdict, f"validation did not finish within "
                                                         f"{self.timeout_s:g} s")
        except RecursionError:
            return self._fallback_errors(value, verdict,
                                         "jsonschema's recursion cannot go this deep")
        except Exception as exc:  # a jsonschema failure must not fail the call (-32603)
            if (held := _FAILURES.allow(type(exc).__name__)) is not None:
                log.exception("jsonschema failed on a value%s",
                              f" ({held} more since the last line)" if held else "")
            return self._fallback_errors(value, verdict, f"jsonschema could not check the value "
                                                         f"({type(exc).__name__})")
        finally:
            _STAND_INS.reset(quoting)
            _DEADLINE.reset(token)
        return bounded_errors(found)

    def _fallback_errors(self, value: Any, verdict: bool | None, why: str) -> Errors:
        """jsonschema-rs's own messages where jsonschema gave none (time, stack, a failure)
        and they cost linear time, and little (they hold the GIL: the loop waits); without
        them, the value is refused, saying ``why``."""
        if self._fast is not None and verdict is False and self._linear_errors \
                and self._cheap(value):
            found = islice(self._fast.iter_errors(value), MAX_ERRORS)
            return _bounded([{"path": _cut_path(json_pointer(e.instance_path)),
                              "message": _cut(e.message)} for e in found])
        return [{"path": "", "message": f"{why}; the value is refused"}]


class _Line:
    """A value as a verdict process is sent it (verdicts.portable), written when first
    needed, then kept: its verdict's request and its error pass send the same (1 MB takes
    1-20 ms to write, in a thread, the interpreter held)."""

    __slots__ = ("_line", "_written", "text", "value")

    def __init__(self, value: Any, text: bytes | None = None) -> None:
        self.value = value
        self.text = text  # its orjson text, where made already
        self._line: tuple[bytes, str] | None = None
        self._written = False

    def get(self) -> tuple[bytes, str] | None:
        if not self._written:
            self._line, self._written = verdicts.portable(self.value, self.text), True
        return self._line


def _error_list(answer: bytes) -> Errors | None:
    """A verdict process's error list (JSON: orjson's, or the standard library's where a
    path holds a lone surrogate); None when the answer is not one."""
    try:
        found = jsonfast.loads(answer)
    except ValueError:
        return None
    if not isinstance(found, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str)
            and isinstance(e.get("message"), str) for e in found):
        return None
    return found


async def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_THREADS, function, *args)


def bounded_errors(found: Iterable[ValidationError]) -> Errors:
    """The first MAX_ERRORS of jsonschema's errors, in item order, as ``{path, message}``,
    each cut and all of them held to MAX_ERRORS_CHARS."""
    errors = sorted(islice(found, MAX_ERRORS), key=lambda e: path_order(e.absolute_path))
    return _bounded([{"path": _cut_path(json_pointer(e.absolute_path)),
                      "message": _cut(e.message)} for e in errors])


def path_order(parts: Any) -> list[tuple[int, int, str]]:
    """A sort key for error paths: items by index (/2 before /10), then keys by name."""
    return [(0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in parts]


def json_pointer(parts: Any) -> str:
    """A JSON Pointer (RFC 6901): "~" and "/" in a key escaped, so "a/b" is not a in b."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _bounded(errors: Errors) -> Errors:
    """The first errors, up to MAX_ERRORS_CHARS of paths and messages (one at least)."""
    total = 0
    for kept, error in enumerate(errors):
        total += len(error["path"]) + len(error["message"])
        if total > MAX_ERRORS_CHARS and kept:
            return errors[:kept]
    return errors


def _cut(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit - 50]}... ({len(message)} characters in all)"


def _cut_path(path: str) -> str:
    """Its keys are the client's: one key of 400 KB of "/" made a path of 800 KB (and the
    first error is always kept, whatever its size)."""
    return _cut(path, MAX_PATH_CHARS)


def _json(value: Any) -> tuple[int, bytes | None]:
    """The length of ``value`` as compact JSON, and the text (orjson's). None where orjson
    cannot write it (an integer beyond 64 bits): its length is then taken as huge."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return LOOP_VERDICT_BYTES + 1, None
    return len(text), text


def _long(value: Any) -> bool:
    """Is ``value`` longer than QUOTING_VALUE_CHARS as compact JSON? Its values are counted
    first, in bounded time: each takes two characters at least, so past half as many it is.
    Writing it out to know held the GIL in one call, whatever its size (~5 ms for 1 MB of
    empty objects, the event loop waiting)."""
    most = (QUOTING_VALUE_CHARS + 3) // 2  # 2 * most - 1 characters > QUOTING_VALUE_CHARS
    try:
        counted = weight(value, most)
    except RecursionError:  # an output nested 1,000 deep: orjson refuses it (below) at once
        counted = 0
    return counted >= most or _json(value)[0] > QUOTING_VALUE_CHARS


# --- jsonschema, with bounded keywords and a deadline ---


def _python_validator(schema: Any, dialect: type[Validator], format_assertion: bool) -> Validator:
    keywords = {name: _deadlined(fn) for name, fn in dialect.VALIDATORS.items()}
    keywords |= {"pattern": _deadlined(ecma_pattern), "uniqueItems": _deadlined(_unique_items),
                 "multipleOf": _deadlined(_multiple_of), "anyOf": _deadlined(_any_of),
                 "oneOf": _deadlined(_one_of), "type": _deadlined(_type),
                 "enum": _deadlined(_enum)}
    if "patternProperties" in keywords:
        keywords |= {"patternProperties": _deadlined(_pattern_properties),
                     "additionalProperties": _deadlined(_additional_properties)}
    bounded = validators.extend(dialect, keywords)
    # no $schema inside: jsonschema would switch a subschema that has one to its stock class
    return bounded(
        _jsonschema_copy(schema, dialect),
        registry=Registry(),  # the schema is self-contained: nothing is fetched
        format_checker=_Formats(dialect) if format_assertion else None,
    )


class _Formats(FormatChecker):
    """Format assertion for jsonschema: jsonschema-rs's checks, which cover every format of
    the dialect to its RFC (jsonschema's own, without optional packages that cost 20 MB
    and a second at start, know 8 and pass ``date-time`` or ``uri`` unchecked), and those
    8 too where jsonschema has them (its ``idn-hostname`` is IDNA2008's, which refuses the
    full-width A (U+FF21) jsonschema-rs takes); ``regex`` read as ECMA-262."""

    def __init__(self, dialect: type[Validator]) -> None:
        super().__init__(())
        self._rust = RUST_CLASSES.get(specification_of(dialect).name)
        self._fallback = dialect.FORMAT_CHECKER
        self._defined = DIALECT_FORMATS.get(specification_of(dialect).name, frozenset())

    def check(self, instance: object, format: str) -> None:
        if format not in self._defined or not isinstance(instance, str):
            return  # an annotation in this dialect; every format is one of strings
        if format == "regex":
            if (len(instance) > MAX_FORMAT_REGEX_CHARS
                    or instance.count("\\p") + instance.count("\\P")
                    > MAX_FORMAT_REGEX_PROPERTIES):
                raise FormatError(f"{_short_repr(instance)} is too large a 'regex' to check: "
                                  f"at most {MAX_FORMAT_REGEX_CHARS} characters and "
                                  f"{MAX_FORMAT_REGEX_PROPERTIES} \\p{{...}} classes")
            try:
                ecma.check(instance)
            except ecma.PatternError as exc:
                raise FormatError(f"{instance!r} is not a 'regex'", cause=exc) from exc
        elif self._rust is None:
            self._fallback.check(instance, format)
        elif not (_format_validator(self._rust, format).is_valid(_case_folded(instance, format))
                  and self._fallback.conforms(instance, format)):
            raise FormatError(f"{instance!r} is not a {format!r}")


def format_checks(schema: Any, dialect: str) -> dict[str, Callable[[str], bool]]:
    """jsonschema-rs's ``formats`` for ``schema`` in ``dialect`` (its name in
    ``referencing``), with format assertion: the formats its own checks would judge
    otherwise than _Formats (see _lax_format), each checked by _Formats, string by string.
    verdicts.rust_validator asks for them, in the server and in the verdict processes."""
    cls = DIALECTS.get(dialect)
    if cls is None:
        return {}
    formats = _Formats(cls)
    names = {name for node in reachable_nodes(schema, specification_of(cls))
             if isinstance(name := node.contents.get("format"), str)
             and _lax_format(name, cls)}
    return {name: functools.partial(_conforms, formats, name) for name in names}


def _conforms(formats: _Formats, format: str, instance: str) -> bool:
    try:
        formats.check(instance, format)
    except FormatError:
        return False
    return True


def _lax_format(format: Any, dialect: type[Validator]) -> bool:
    """May jsonschema-rs's verdict on ``format`` differ from _Formats's? (See LAX_RUST_FORMATS,
    DIALECT_FORMATS.)"""
    if not isinstance(format, str):
        return False
    return format in LAX_RUST_FORMATS or format in dialect.FORMAT_CHECKER.checkers \
        or format not in DIALECT_FORMATS.get(specification_of(dialect).name, frozenset())


def _case_folded(instance: object, format: str) -> object:
    """A host name as jsonschema-rs can judge it: it refuses an upper-case ACE prefix
    (XN--ZCKZAH), which RFC 3490 (§5) matches without regard to case."""
    if format in ("hostname", "idn-hostname") and isinstance(instance, str):
        return instance.lower()
    return instance


@functools.lru_cache(maxsize=256)  # format names come from loaded schemas
def _format_validator(rust_class: Any, format: str) -> Any:
    return rust_class({"format": format}, validate_formats=True)


def _jsonschema_copy(schema: Any, dialect: type[Validator]) -> Any:
    """``schema`` as jsonschema is given it: without ``$schema`` inside, and, in a draft
    2019-09 schema with ``unevaluatedItems``, a boolean ``items`` written as the object
    schema it equals (``{}``, ``{"not": {}}``). jsonschema counts the items that schema
    evaluated with ``len(items)``, which fails on a boolean (a TypeError on every array),
    so without this, a value jsonschema-rs has no verdict for would be refused whatever it
    is. The price: ``items: false`` says "1 should not be valid under {}" there."""
    copied = copy.deepcopy(schema)
    spec = specification_of(dialect)
    root = Resource(contents=copied, specification=spec)  # type: ignore[call-arg]
    found = list(nodes(copied, spec, root.id() or ""))
    booleans_counted = spec.name == "draft2019-09" and any(
        "unevaluatedItems" in node.contents for node in found)
    for node in found:
        node.contents.pop("$schema", None)
        if booleans_counted and isinstance(items := node.contents.get("items"), bool):
            node.contents["items"] = {} if items else {"not": {}}
    return copied


Keyword = Callable[[Any, Any, Any, Any], Any]


def _deadlined(keyword: Keyword) -> Keyword:
    """``keyword``, raising ValidationTimeout once the context's deadline has passed."""

    @functools.wraps(keyword)
    def bounded(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _check_deadline()
        return keyword(validator, value, _quotable(instance), schema)

    return bounded


def _check_deadline() -> None:
    """ValidationTimeout once the context's deadline has passed: at each keyword, and at
    each key of the keywords that try every key against every pattern (20,000 keys by 1,000
    patterns are minutes of searches inside one keyword)."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise ValidationTimeout


def _multiple_of(validator: Any, divisor: Any, instance: Any,
                 schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "number") and not multiple_of(instance, divisor):
        yield ValidationError(f"{instance!r} is not a multiple of {divisor}")


def _any_of(validator: Any, any_of: list[Any], instance: Any,
            schema: Any) -> Iterator[ValidationError]:
    """jsonschema's anyOf, without the branches' errors in its error's context (no answer
    shows them): a branch is given up at its first error. jsonschema kept every error of
    every branch below, 2**levels of them for a recursion entered twice per level, and
    their garbage collection held the GIL, so the event loop, for 0.3 s at a time."""
    if not any(_holds(validator, instance, sub, i) for i, sub in enumerate(any_of)):
        yield ValidationError(f"{instance!r} is not valid under any of the given schemas")


def _one_of(validator: Any, one_of: list[Any], instance: Any,
            schema: Any) -> Iterator[ValidationError]:
    """jsonschema's oneOf, its messages, without the branches' errors (see _any_of)."""
    valid = [sub for i, sub in enumerate(one_of) if _holds(validator, instance, sub, i)]
    if not valid:
        yield ValidationError(f"{instance!r} is not valid under any of the given schemas")
    elif len(valid) > 1:  # jsonschema names the first valid one last
        reprs = ", ".join(repr(sub) for sub in [*valid[1:], valid[0]])
        yield ValidationError(f"{instance!r} is valid under each of {reprs}")


def _holds(validator: Any, instance: Any, subschema: Any, index: int) -> bool:
    return next(validator.descend(instance, subschema, schema_path=index), None) is None


def ecma_pattern(validator: Any, pattern: str, instance: Any,
                 schema: Any) -> Iterator[ValidationError]:
    """``pattern`` as ECMA-262 reads it (Python's ``$`` also matches before a final newline)."""
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name in instance:
            _check_deadline()
            if _search(pattern, name):
                yield from validator.descend(instance[name], subschema, path=name,
                                             schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [name for name in instance if name not in declared]
    if patterns:
        extras = [name for name in extras if not _matches_any(patterns, name)]
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif additional is False and extras:
        yield ValidationError(_extras_message(extras, patterns))


def _matches_any(patterns: list[str], name: str) -> bool:
    _check_deadline()
    return any(_search(p, name) for p in patterns)


def _extras_message(extras: list[str], patterns: list[str]) -> str:
    """The wording of jsonschema's own additionalProperties errors (``extras``: the names
    not allowed). Past MAX_EXTRAS_NAMED of them, it counts them and names the first three:
    100,000 names took ~100 ms to sort and quote, with the GIL held for the sort."""
    regexes = ", ".join(repr(p) for p in sorted(patterns))
    if len(extras) > MAX_EXTRAS_NAMED:
        first = ", ".join(repr(name)[:100] for name in extras[:3])
        if patterns:
            return (f"{len(extras)} names do not match any of the regexes: {regexes} "
                    f"({first} among them)")
        return (f"Additional properties are not allowed ({len(extras)} were unexpected, "
                f"{first} among them)")
    names = ", ".join(repr(name) for name in sorted(extras, key=str))
    if patterns:
        verb = "does" if len(extras) == 1 else "do"
        return f"{names} {verb} not match any of the regexes: {regexes}"
    verb = "was" if len(extras) == 1 else "were"
    return f"Additional properties are not allowed ({names} {verb} unexpected)"


def quoting_class(dialect: type[Validator]) -> type[Validator]:
    """``dialect`` whose ``type`` and ``enum`` errors quote at most QUOTE_CHARS of a value,
    and whose ``additionalProperties`` counts many names (_extras_message): for validators of
    the server's own params, which run on the event loop."""
    return validators.extend(dialect, {"type": _type, "enum": _enum,
                                       "additionalProperties": _additional_properties})


def _type(validator: Any, types: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """jsonschema's ``type``, quoting the value with _quoted."""
    types = jsonschema._utils.ensure_list(types)
    if not any(validator.is_type(instance, type_) for type_ in types):
        reprs = ", ".join(repr(type_) for type_ in types)
        yield ValidationError(f"{_quoted(instance)} is not of type {reprs}")


def _enum(validator: Any, enums: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """jsonschema's ``enum``, quoting the value with _quoted."""
    if all(not jsonschema._utils.equal(each, instance) for each in enums):
        yield ValidationError(f"{_quoted(instance)} is not one of {enums!r}")


def _quoted(value: Any) -> str:
    """``repr(value)``, as jsonschema quotes a value in a message; past QUOTE_CHARS, its
    beginning and "...". A message is cut past MAX_MESSAGE_CHARS anyway, and writing out all
    of a large value held the GIL (the event loop waiting) in one call: ~50 ms for 1 MiB of
    floats, in a thread that no deadline could stop."""
    parts: list[str] = []
    try:
        if _repr_into(value, parts, [QUOTE_CHARS]):
            return "".join(parts)
    except RecursionError:
        pass
    return "".join(parts)[:QUOTE_CHARS] + "..."


def _repr_into(value: Any, parts: list[str], room: list[int]) -> bool:
    """Append repr(value) to ``parts`` while ``room`` (characters) lasts; False once it
    ran out (what was appended is then its beginning). Containers of JSON values are walked
    here; anything else is repr()'s (a long string: its beginning's)."""
    if isinstance(value, list):  # a stand-in too (_QuotedList)
        if not _put("[", parts, room):
            return False
        for index, item in enumerate(value):
            if (index and not _put(", ", parts, room)) or not _repr_into(item, parts, room):
                return False
        return _put("]", parts, room)
    if isinstance(value, dict):
        if not _put("{", parts, room):
            return False
        for index, (key, item) in enumerate(value.items()):
            if (index and not _put(", ", parts, room)) or not _repr_into(key, parts, room) \
                    or not _put(": ", parts, room) or not _repr_into(item, parts, room):
                return False
        return _put("}", parts, room)
    if type(value) is str and len(value) > room[0]:
        _put(repr(value[:room[0]]), parts, room)
        return False
    return _put(repr(value), parts, room)


def _put(text: str, parts: list[str], room: list[int]) -> bool:
    parts.append(text)
    room[0] -= len(text)
    return room[0] >= 0


def _quotable(instance: Any) -> Any:
    """``instance``, or, in an error pass over a large value, where its repr would be long, a
    stand-in: a copy of its top level whose repr is _quoted's, and whose items are read as
    stand-ins too. jsonschema writes a value out whole into a message (and into the first
    error of every ``is_valid``), in one call that holds the GIL: ~60 ms for 1 MB of floats,
    the event loop waiting, and 120-140 ms for a schema with four such messages."""
    stand_ins = _STAND_INS.get()
    if stand_ins is None or type(instance) not in (list, dict) or _short(instance):
        return instance
    known = stand_ins.get(id(instance))
    if known is None:
        try:
            long = not _repr_into(instance, [], [QUOTE_CHARS])
        except RecursionError:
            long = True
        stand_in = (_QuotedList if type(instance) is list else _QuotedDict)(instance) \
            if long else instance
        known = stand_ins[id(instance)] = (instance, stand_in)  # holds it: its id stays its
    return known[1]


def _short(value: list[Any] | dict[str, Any]) -> bool:
    """A few values that hold no container and no long string: a short repr, for sure."""
    return len(value) <= 8 and not any(
        type(item) in (list, dict) or (type(item) is str and len(item) > 64)
        for item in (value.values() if type(value) is dict else value))


class _QuotedList(list):
    """A stand-in for a long list (_quotable)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return _quoted(self)

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _QuotedList(item) if isinstance(index, slice) else _quotable(item)

    def __iter__(self) -> Iterator[Any]:
        return map(_quotable, super().__iter__())


class _QuotedDict(dict):
    """A stand-in for a long object (_quotable)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return _quoted(self)

    def __getitem__(self, key: Any) -> Any:
        return _quotable(super().__getitem__(key))


def _unique_items(validator: Any, unique: bool, instance: Any,
                  schema: Any) -> Iterator[ValidationError]:
    if unique and validator.is_type(instance, "array") and not all_distinct(instance):
        yield ValidationError(f"{instance!r} has non-unique elements")


def _short_repr(value: Any, most: int = 200) -> str:
    """repr(value), cut to about ``most`` characters (a 50 KB array makes no message)."""
    text = repr(value)
    return text if len(text) <= most else f"{text[:most]}...{text[-1]}"


# --- regular expressions ---


class _EcmaRe:
    """What jsonschema's own helpers get for the ``re`` module: they match the names of
    ``patternProperties`` with it to find what ``unevaluatedProperties`` (2019-09 and
    later) has left, which must read the patterns as ECMA-262, bounded, like the keywords
    above (``re`` read ``^\\d$`` as Unicode digits and backtracked under the GIL)."""

    @staticmethod
    def search(pattern: str, string: str, flags: int = 0) -> bool | None:
        return _search(pattern, string) or None


jsonschema._utils.re = _EcmaRe  # type: ignore[attr-defined]
jsonschema._legacy_keywords.re = _EcmaRe  # type: ignore[attr-defined]


def _search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``, within the context's deadline."""
    compiled = ecma.compiled(pattern)
    if isinstance(compiled, re2._Regexp):
        try:
            return compiled.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: RE2 reads UTF-8 only
            compiled = ecma.backtracking(pattern)
    deadline = _DEADLINE.get()
    budget = 1.0 if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        return compiled.search(text, timeout=budget, concurrent=True) is not None
    except TimeoutError:
        raise ValidationTimeout from None


