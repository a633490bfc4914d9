"""JSON on the hot path: orjson where it gives exactly what the standard library gives.

Every call's payload is parsed from its frame and written to the harness; for a
few kilobytes of JSON, ``json`` costs a good part of the call, orjson a fraction.
The standard library stays the reference: orjson is only used where its answer is
known to be the same, and ``json`` decides everything else (its errors included).

Parsing, where orjson differs and ``json`` takes over:

- an integer beyond 64 bits becomes a float: text with a run of 19 digits or more
  (anywhere, strings included) goes to ``json``;
- it nests deeper than ``json`` can (1024 levels): text with more than
  MAX_FAST_BRACKETS opening brackets goes to ``json``;
- it refuses what ``json`` (or the caller's hooks) may accept: lone surrogate
  escapes, ``NaN``/``Infinity``, numbers beyond a double's range. Any refusal falls
  back to the reference, which accepts or refuses with its own message.

Writing (the harness's lines only: what clients get on the wire stays the text ``json``
writes, byte for byte), where orjson differs and ``json`` writes instead:

- NaN and the infinities become ``null`` (``json`` writes them, or refuses with
  ``allow_nan=False``): output holding ``null`` anywhere is written again by ``json``;
- non-ASCII text is UTF-8 (the wire is ASCII JSON): non-ASCII output is too;
- integers beyond 64 bits, nesting beyond 254 levels, lone surrogates, non-string
  keys: refused, so ``json`` writes them (or refuses them itself);
- dataclasses, datetimes and str/int/dict/list subclasses: passed through (so
  refused, and left to ``json``), never written in orjson's own way.

Otherwise the text may differ, never the value: a float is the shortest text that reads
back the same number in both, with another exponent form (``1e-7``, ``1e-07``;
``0.00006``, ``6e-05``), and DEL is written as is rather than as ``\u007f``.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from service.heap import HEAP, PARK_CONTAINERS

CHARS_PER_VALUE = 256  # weight: a string weighs one more value for every so many characters
BITS_PER_VALUE = 64  # weight: and an integer for every so many bits
GC_PAUSE_CHARS = 64 << 10  # a text this long is decoded with the collector paused
# decoded_size: a container (an empty list takes 56 bytes, one of one item ~100: its items are
# an allocation of their own), an item or a key (8 bytes, its place, 24-32 more for a float)
CONTAINER_BYTES = 128
ITEM_BYTES = 64
# More opening brackets than this cannot nest deeper than json's recursion allows.
MAX_FAST_BRACKETS = 512
_LONG_RUN = 19  # digits: the shortest integer literal orjson may read as a float
_OPTIONS = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS)
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_RUN = b"0" * _LONG_RUN


def loads(text: str | bytes, reference: Callable[[Any], Any] = json.loads, *,
          same_depth: bool = True) -> Any:
    """``reference(text)``, computed by orjson when that gives the same value.
    ``same_depth=False``: orjson also reads what nests deeper than ``json`` could follow
    here (up to its own 1024 levels), where only the value matters, not the refusal.

    Past GC_PAUSE_CHARS of text, with the garbage collector paused: a JSON value holds no
    reference cycle for it to find, and the collections that its many new containers set
    off took most of the time (a frame of 1 MiB of small lists: 61 ms, 16 ms paused). A
    value of more than heap.PARK_CONTAINERS containers is then parked out of its reach
    (service/heap.py): collections set off later scanned it again while its call ran."""
    if len(text) < GC_PAUSE_CHARS or not gc.isenabled():
        return _loads(text, reference, same_depth)[0]
    gc.disable()
    try:
        value, brackets = _loads(text, reference, same_depth)
        if brackets > PARK_CONTAINERS:
            HEAP.park()
        return value
    finally:
        gc.enable()


def decoded_size(text: str | bytes) -> int:
    """About the most memory the value of the JSON ``text`` takes once decoded: its length
    in UTF-8 (its strings), CONTAINER_BYTES for each opening bracket and ITEM_BYTES for each
    item and key (each comma and colon, and one); all counted in strings too. Measured with
    tracemalloc: 1-9x what the value takes (a 1 MB text of empty lists decodes to 21 MB, of
    one-key objects to 24 MB); a string of astral characters, up to 4 bytes a character,
    can take more. Two passes over its bytes: ~1 ns a byte each."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    brackets = len(data) - len(data.translate(None, b"[{"))
    items = len(data) - len(data.translate(None, b",:"))
    return len(data) + CONTAINER_BYTES * brackets + ITEM_BYTES * (items + 1)


def opening_brackets(text: str | bytes) -> int:
    """At least as many as the containers a JSON text decodes to (strings may hold some)."""
    if isinstance(text, str):
        return text.count("[") + text.count("{")
    return text.count(b"[") + text.count(b"{")


def _loads(text: str | bytes, reference: Callable[[Any], Any],
           same_depth: bool) -> tuple[Any, int]:
    """The value, and the text's opening brackets (_scan)."""
    brackets, long_run = _scan(text)
    if not long_run and not (same_depth and brackets > MAX_FAST_BRACKETS):
        try:
            return orjson.loads(text), brackets
        except orjson.JSONDecodeError:
            pass  # the reference decides: it may accept it (NaN, "\ud800") or word the error
    return reference(text), brackets


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` refusing what the wire cannot carry back: ``NaN``, ``Infinity`` and
    numbers beyond a double's range (``1e400`` would read as an infinity). The reference
    for frames and for the harness's lines, whose encoders refuse them too."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite_float)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the range of a double")
    return value


def _scan(text: str | bytes) -> tuple[int, bool]:
    """The opening brackets of ``text``, and whether it holds a run of _LONG_RUN digits (which
    orjson may read otherwise): one pass over the bytes (digits become 0, brackets go; a run
    a bracket joins counts too, which only costs speed)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    scanned = data.translate(_DIGITS, b"[{")
    return len(data) - len(scanned), _RUN in scanned


def dumps_ascii(value: Any) -> bytes | None:
    """Compact ASCII JSON text of the value ``json.dumps(value, separators=(",", ":"))``
    writes, or None where orjson would not write that value (the caller runs ``json``)."""
    try:
        text = orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        return None
    if b"null" in text or not text.isascii():
        return None
    return text


def weight(value: Any, most: int) -> int:
    """How many values ``value`` holds, itself included, counted up to ``most``; a string
    weighs one more for every CHARS_PER_VALUE characters, an integer for every
    BITS_PER_VALUE bits."""
    if isinstance(value, str):
        return 1 + len(value) // CHARS_PER_VALUE
    if type(value) is int:  # written out in quadratic time: 4,000 digits take ~0.2 ms
        return 1 + value.bit_length() // BITS_PER_VALUE
    if isinstance(value, dict):
        if 1 + 2 * len(value) >= most:  # a key and a value each, at least: no need to walk
            return most
        items: Iterable[Any] = (part for item in value.items() for part in item)
    elif isinstance(value, list | tuple):
        if 1 + len(value) >= most:
            return most
        items = value
    else:
        return 1
    total = 1
    for item in items:
        if total >= most:
            break
        total += weight(item, most - total)
    return total
