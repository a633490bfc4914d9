"""jsonschema-rs's verdicts: its validators, and a process of their own for costly ones.

jsonschema-rs gives the verdict on every value (validation.py). It holds the interpreter
while it checks, and some values cost it milliseconds to seconds: a pattern's linear-time
engine takes a step per character per instruction of its program, nested ``unevaluated*``
keywords evaluate a value again at each level (validation.py counts both). Such a verdict
used to go to jsonschema, off the loop, at ~1 s per MB: a valid 900 KB order was refused
for time. It is given here instead, in a child process (``python -m
service.manifest.verdicts``, which also imports validation.py for the error lists) started
on first use: it compiles each schema once and checks one value at a time, while the
server's loop goes on. There are as many children as CPUs (at most MOST_PROCESSES), each
started when values first wait for it. A verdict still running at its deadline has its
child killed (the next verdict starts another): a hostile value costs one CPU for
``validation_timeout_s`` at most, and values that find every child busy until their
deadline get no verdict.

The children also write the error lists of refused values (validation.py's jsonschema
pass, which is Python: in a thread of the server, it took the interpreter from the event
loop 5 ms at a time, its switch interval, and eight 1.1 MB objects held /healthz 280-440
ms). They run at a lower priority (NICENESS) than the server: the loop gets a CPU first.

Over the child's stdin and stdout: the child says ``ready`` once it can take values; then
three lines per value: what is asked (``v DECODER``: a verdict; ``e TIMEOUT DEADLINE
VERDICT DECODER``: jsonschema's errors, see :meth:`VerdictProcess.errors`), the schema's key
(compact JSON: ``[dialect, format assertion, schema]``, the dialect as ``referencing`` names
it) and the value (:func:`portable`: orjson's JSON, or the value pickled, in base64, where
that JSON would not read back the same; DECODER names which). The answer is one line: for a
verdict ``1`` (valid), ``0`` (invalid) or ``-`` (none: the schema did not compile, or the
value could not be read); for errors their list as compact JSON, or ``-``. The child
unpickles only what the server pickled: values it decoded from JSON, made of JSON's types.
"""

from __future__ import annotations

import atexit
import binascii
import contextlib
import gc
import json
import logging
import math
import os
import pickle
import queue
import select
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import IO, Any

import jsonschema_rs
import orjson

from service.heap import PARK_CONTAINERS
from service.jsonfast import opening_brackets

log = logging.getLogger(__name__)

RUST_CLASSES: dict[str, Any] = {  # by the dialect's name in ``referencing``
    "draft2020-12": jsonschema_rs.Draft202012Validator,
    "draft2019-09": jsonschema_rs.Draft201909Validator,
    "draft-07": jsonschema_rs.Draft7Validator,
    "draft-06": jsonschema_rs.Draft6Validator,
    "draft-04": jsonschema_rs.Draft4Validator,
}
ANSWERS = {b"1": True, b"0": False}
VERDICT_CODES = {True: "1", False: "0", None: "-"}  # the verdict, in an errors request
VERDICT = b"v"  # a request's first word: a verdict; an errors request's is b"e"
NO_ANSWER = b"-"
READY = b"ready"  # the child's first line, once it can take values
NICENESS = 10  # the children's, above the server's: the event loop gets a CPU first
START_TIMEOUT_S = 10.0
MOST_SCHEMAS = 64  # compiled schemas the child keeps (least recently used go first)
MOST_PROCESSES = 4


def rust_validator(schema: Any, dialect: str, format_assertion: bool) -> Any:
    """The jsonschema-rs validator of ``schema`` in ``dialect`` (its name in
    ``referencing``), or None when it cannot compile it. With format assertion, it calls
    back validation.format_checks's checks for the formats its own would judge otherwise."""
    formats = None
    if format_assertion:
        from service.manifest.validation import format_checks  # it imports this module
        formats = format_checks(schema, dialect) or None
    cls = RUST_CLASSES.get(dialect)
    if cls is None:
        return None
    try:
        # the linear-time engine only: a backtracking one (lookarounds, backreferences)
        # costs milliseconds per string within its step limit, on the event loop
        return cls(schema, validate_formats=format_assertion, formats=formats,
                   retriever=_refuse_retrieval,
                   pattern_options=jsonschema_rs.RegexOptions(),
                   keywords={"multipleOf": _RustMultipleOf, "uniqueItems": _RustUniqueItems})
    except Exception as exc:  # e.g. such a pattern: jsonschema decides
        log.debug("jsonschema-rs cannot compile a schema (%s); jsonschema alone validates", exc)
        return None


def _refuse_retrieval(uri: str) -> Any:
    raise ValueError(f"{uri} is not in the schema (nothing is fetched)")


class _RustMultipleOf:
    """``multipleOf`` for jsonschema-rs: :func:`multiple_of`. Its own is exact in decimal
    (1e300 is a multiple of 1e-300, which jsonschema denies) and costs up to ~1 ms for a
    number of thousands of digits."""

    def __init__(self, parent_schema: Any, divisor: Any, schema_path: Any) -> None:
        self.divisor = divisor

    def validate(self, instance: Any) -> None:
        if type(instance) in (int, float) and not multiple_of(instance, self.divisor):
            raise ValueError(f"{instance!r} is not a multiple of {self.divisor}")


class _RustUniqueItems:
    """``uniqueItems`` for jsonschema-rs: :func:`all_distinct`, in linear time. Its own
    compared every pair of arrays that hash alike, and ``[]``, ``[[]]``, ``[[], []]``...
    do: 16,384 arrays of such arrays (0.95 MB) took 29 s, the GIL held."""

    def __init__(self, parent_schema: Any, unique: Any, schema_path: Any) -> None:
        self.unique = unique is True

    def validate(self, instance: Any) -> None:
        if self.unique and type(instance) is list and not all_distinct(instance):
            raise ValueError("has non-unique elements")


def all_distinct(items: Sequence[Any]) -> bool:
    """No two items are equal as JSON values (1 == 1.0, true != 1), in linear time."""
    try:
        if len(set(items)) == len(items):
            return True  # distinct in Python (where true == 1), so in JSON
    except TypeError:  # a list or an object among them: by their keys
        pass
    seen: set[Any] = set()
    for item in items:
        key = _json_key(item)
        if key in seen:
            return False
        seen.add(key)
    return True


def _json_key(value: Any) -> Any:
    """A hashable key equal for two values exactly when JSON Schema calls them equal."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_json_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    return ("other", id(value))


def multiple_of(instance: int | float, divisor: int | float) -> bool:
    """jsonschema's verdict: a float quotient where it is finite (so 0.0075 is a multiple
    of 0.0001), exact where that overflows. jsonschema itself raises OverflowError for an
    integer beyond a float's range; here it is exact too. Not finite: not a multiple."""
    if isinstance(instance, float) and not math.isfinite(instance):
        return False
    try:
        if isinstance(divisor, float):
            quotient = instance / divisor
            return int(quotient) == quotient
        return instance % divisor == 0
    except OverflowError:  # a float and an integer beyond its range
        num, den = instance.as_integer_ratio()
        divisor_num, divisor_den = divisor.as_integer_ratio()
        return (num * divisor_den) % (den * divisor_num) == 0


# --- the verdict process -----------------------------------------------------------------


def encoded(value: Any) -> bytes | None:
    """``value`` as compact JSON that reads back as the same value, or None: orjson refuses
    integers beyond 64 bits and lone surrogates, and writes NaN and the infinities as
    ``null`` (so text holding ``null`` is checked for them). For schemas: small."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return None
    if b"null" in text:
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            return None
    return text


def portable(value: Any, text: bytes | None = None) -> tuple[bytes, str] | None:
    """``value`` as one line that a verdict process reads back as the same value, and the
    name of its decoder (:func:`read`): orjson's text where it holds no ``null`` (orjson writes
    NaN and the infinities so; it refuses integers beyond 64 bits and lone surrogates), else
    the value pickled, in base64. ``text``: ``orjson.dumps(value)``, when the caller has it.
    None: nested too deeply to write (or not made of JSON's types).

    Not the standard library's JSON: it holds the interpreter while it writes, in a thread
    of the server, and the event loop waits (1 MB of 4,000-digit integers, each written in
    quadratic time: 45 ms; 1 MB of objects with nulls, written to look for NaN: 13 ms).
    pickle writes them in 0.2 and 4 ms."""
    if text is None:
        try:
            text = orjson.dumps(value)
        except TypeError:  # (also past orjson's 254 levels)
            text = None
    if text is not None and b"null" not in text:
        return text, "o"
    try:
        return binascii.b2a_base64(pickle.dumps(value, protocol=5), newline=False), "p"
    except (RecursionError, TypeError, pickle.PicklingError):
        return None


def json_line(value: Any) -> bytes | None:
    """An error list as compact JSON: orjson's, else the standard library's (a path may hold
    a lone surrogate). None: nested too deeply to write."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError):
        return None


def read(line: bytes, decoder: str) -> tuple[Any, int]:
    """The value on a line :func:`portable` wrote (``decoder``: the name it gave), and at
    least as many as its containers: the text's opening brackets, or the pickle's bytes
    that make a list or a dict (strings and numbers may hold some too)."""
    if decoder == "o":
        return orjson.loads(line), opening_brackets(line)
    raw = binascii.a2b_base64(line)
    return pickle.loads(raw), raw.count(b"]") + raw.count(b"}")  # EMPTY_LIST, EMPTY_DICT


def schema_key(schema: Any, dialect: str, format_assertion: bool) -> bytes | None:
    """The first line of a request for ``schema``; None when it has no JSON text."""
    return encoded([dialect, format_assertion, schema])


class VerdictProcess:
    """One child, used by one thread at a time (VerdictPool); started when first needed."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self.started = 0  # children started so far

    def verdict(self, key: bytes, value: tuple[bytes, str], deadline: float) -> bool | None:
        """The child's verdict on ``value`` (its line and decoder, :func:`portable`); None
        when it has none, or none before ``deadline`` (``time.monotonic()``): the child is
        then killed."""
        text, decoder = value
        ask = VERDICT + b" " + decoder.encode()
        return ANSWERS.get(self._answer(lambda start_s: ask, key, text, deadline) or b"")

    def errors(self, key: bytes, value: tuple[bytes, str], verdict: bool | None,
               timeout_s: float, deadline: float, wait_s: float) -> bytes | None:
        """The child's answer to an errors request: jsonschema's errors (validation.py's
        ``SchemaValidator._errors``) on ``value`` (its text and decoder, :func:`portable`),
        as JSON, or NO_ANSWER; None when it has not answered ``wait_s`` past ``deadline``,
        when its pass is to stop: the child is then killed. The child's start, and its
        compiling of the schema, are not counted against ``deadline``."""
        text, decoder = value

        def ask(start_s: float) -> bytes:
            return (f"e {timeout_s!r} {deadline + start_s!r} {VERDICT_CODES[verdict]} "
                    f"{decoder}").encode()

        return self._answer(ask, key, text, deadline + wait_s)

    def _answer(self, ask: Callable[[float], bytes], key: bytes, value: bytes,
                deadline: float) -> bytes | None:
        """The child's answer line to the request ``ask(seconds its start took)``."""
        try:
            # The child's start is the server's cost, not the value's: not counted.
            start_s = self._start_if_needed()
            deadline += start_s
            child = self._child
            assert child is not None and child.stdin is not None and child.stdout is not None
            _write_until(child.stdin, b"\n".join((ask(start_s), key, value, b"")), deadline)
            return _line_until(child.stdout, deadline)
        except (OSError, EOFError):  # the deadline passed (TimeoutError), or it died
            self.stop()
            return None

    def _start_if_needed(self) -> float:
        """Start the child unless it runs, and wait for its ``ready``: the seconds that took."""
        if self._child is not None and self._child.poll() is None:
            return 0.0
        begun = time.monotonic()
        self._child = subprocess.Popen(
            [sys.executable, "-m", "service.manifest.verdicts"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.started += 1
        assert self._child.stdin is not None and self._child.stdout is not None
        os.set_blocking(self._child.stdin.fileno(), False)  # writes stop at the deadline
        if _line_until(self._child.stdout, begun + START_TIMEOUT_S) != READY:
            raise EOFError("the verdict process did not start")
        return time.monotonic() - begun

    @property
    def pid(self) -> int | None:
        """The running child's host pid (None once it has ended: its pid may be reused)."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def stop(self) -> None:
        """Kill the child (a new one starts with the next verdict)."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _write_until(pipe: IO[bytes], data: bytes, deadline: float) -> None:
    """Write all of ``data``; OSError (TimeoutError) once ``deadline`` has passed."""
    fd = pipe.fileno()
    view = memoryview(data)
    while view:
        _wait(fd, deadline, select.POLLOUT)
        view = view[os.write(fd, view):]


def _line_until(pipe: IO[bytes], deadline: float) -> bytes:
    """The child's one-line answer, without its newline; EOFError when the child ended,
    TimeoutError once ``deadline`` has passed."""
    fd = pipe.fileno()
    chunks: list[bytes] = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        _wait(fd, deadline, select.POLLIN)
        chunk = os.read(fd, 1 << 16)  # an error list: up to ~64 KiB (nothing follows it)
        if not chunk:
            raise EOFError("the verdict process ended")
        chunks.append(chunk)
    return b"".join(chunks)[:-1]


def _wait(fd: int, deadline: float, event: int) -> None:
    """Until ``fd`` is ready for ``event`` (or closed); TimeoutError at ``deadline``. (poll:
    the server's descriptors may be numbered past select's 1024.)"""
    poller = select.poll()
    poller.register(fd, event)
    left_ms = (deadline - time.monotonic()) * 1000
    if left_ms <= 0 or not poller.poll(math.ceil(left_ms)):
        raise TimeoutError


class VerdictPool:
    """The verdict processes: each value goes to one that is free."""

    def __init__(self, size: int) -> None:
        self.processes = [VerdictProcess() for _ in range(size)]
        self._free: queue.SimpleQueue[VerdictProcess] = queue.SimpleQueue()
        for process in self.processes:
            self._free.put(process)

    def verdict(self, key: bytes, value: tuple[bytes, str], deadline: float) -> bool | None:
        """A free process's verdict on ``value``; None when none is free by ``deadline``,
        or it has no verdict by then (see VerdictProcess.verdict)."""
        process = self._take(deadline)
        if process is None:
            return None
        try:
            return process.verdict(key, value, deadline)
        finally:
            self._free.put(process)

    def errors(self, key: bytes, value: tuple[bytes, str], verdict: bool | None,
               timeout_s: float, deadline: float, wait_s: float) -> bytes | None:
        """A free process's answer to an errors request (VerdictProcess.errors); None when
        none is free by ``deadline``, or none answers ``wait_s`` past it."""
        process = self._take(deadline)
        if process is None:
            return None
        try:
            return process.errors(key, value, verdict, timeout_s, deadline, wait_s)
        finally:
            self._free.put(process)

    def _take(self, deadline: float) -> VerdictProcess | None:
        try:
            return self._free.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    @property
    def pids(self) -> set[int]:
        return {pid for process in self.processes if (pid := process.pid) is not None}

    @property
    def started(self) -> int:
        return sum(process.started for process in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


VERDICTS = VerdictPool(max(1, min(MOST_PROCESSES, os.cpu_count() or 1)))
atexit.register(VERDICTS.stop)


# --- the child ---------------------------------------------------------------------------


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Say ``ready``, then answer each request on ``requests`` until it ends.

    The collector waits while a value is read, and a verdict, which makes no reference
    cycle, runs with it paused too: 2,000 arrays nested 200 deep took 420 ms to judge
    unique, 250 of them collections scanning the value and the keys made of its items. A
    value of more than PARK_CONTAINERS containers is frozen out of its reach (as the server
    parks it: service/heap.py) before its error pass, which the collector follows; once its
    answer is out, one full collection frees what the pass left in cycles."""
    judge = _Judge()  # jsonschema's: imported before the ready (~0.2 s)
    gc.freeze()  # what the start made: never scanned again
    answers.write(READY + b"\n")
    answers.flush()
    while (ask := requests.readline()) and (key := requests.readline()) \
            and (value := requests.readline()):
        answers.write(judge.answer(ask.split(), key, value) + b"\n")
        answers.flush()
        if judge.parked:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
    gc.unfreeze()  # (serve owns the process's collector; this, for a caller in tests)


class _Judge:
    """The child's validators, by schema key: jsonschema-rs's for verdicts, validation.py's
    SchemaValidator for errors, the MOST_SCHEMAS most recently used of each."""

    def __init__(self) -> None:
        from service.manifest import validation

        self.validation = validation
        self.compiled: OrderedDict[bytes, Any] = OrderedDict()
        self.explainers: OrderedDict[bytes, Any] = OrderedDict()
        self.parked = False  # the last error pass's value was frozen out of the collector

    def answer(self, ask: list[bytes], key: bytes, value: bytes) -> bytes:
        """The answer to one request, or NO_ANSWER where the schema does not compile or the
        value cannot be read (the server's jsonschema then decides, or explains, itself)."""
        self.parked = False
        gc.disable()
        try:
            if ask[0] == VERDICT:
                validator = _cached(self.compiled, key, self._rust_validator)
                if validator is None:
                    return NO_ANSWER
                return b"1" if validator.is_valid(read(value, ask[-1].decode())[0]) else b"0"
            begun = time.monotonic()  # compiling a schema is the server's cost: not counted
            explainer = _cached(self.explainers, key, self._explainer)
            late_s = time.monotonic() - begun
            decoded, containers = read(value, ask[-1].decode())
            return self._explained(ask, explainer, decoded, containers > PARK_CONTAINERS,
                                   late_s)
        except Exception:
            return NO_ANSWER
        finally:
            gc.enable()

    def _explained(self, ask: list[bytes], explainer: Any, value: Any, park: bool,
                   late_s: float) -> bytes:
        """``explainer``'s errors on ``value``, as ``ask`` (``e TIMEOUT DEADLINE VERDICT
        DECODER``) says, its deadline ``late_s`` later; as JSON (:func:`json_line`). Read
        with the collector paused and, if ``park``, frozen out of its reach; the pass runs
        with the collector on."""
        _, timeout_s, deadline, verdict, _ = (part.decode() for part in ask)
        explainer.timeout_s = float(timeout_s)  # (its messages say it)
        if park:
            gc.freeze()
            self.parked = True
        gc.enable()
        found = explainer._errors(value, ANSWERS.get(verdict.encode()), float(deadline) + late_s)
        return json_line(found) or NO_ANSWER

    @staticmethod
    def _rust_validator(dialect: str, format_assertion: bool, schema: Any) -> Any:
        return rust_validator(schema, dialect, format_assertion)

    def _explainer(self, dialect: str, format_assertion: bool, schema: Any) -> Any:
        return self.validation.SchemaValidator(schema, self.validation.DIALECTS[dialect],
                                               format_assertion)


def _cached(found: OrderedDict[bytes, Any], key: bytes, make: Any) -> Any:
    """The validator ``make`` compiles for ``key``'s schema, of the MOST_SCHEMAS most
    recently used."""
    if key not in found:
        found[key] = make(*orjson.loads(key))
        if len(found) > MOST_SCHEMAS:
            found.popitem(last=False)
    found.move_to_end(key)
    return found[key]


if __name__ == "__main__":
    os.nice(NICENESS)
    serve(sys.stdin.buffer, sys.stdout.buffer)
