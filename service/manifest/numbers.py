"""Numbers read from manifests, schema files and script metadata.

Each is a JSON number a double can hold (RFC 8259 §6: the range hosts can count on; a
JavaScript host reads anything bigger as Infinity): finite, and an integer at most
MAX_MAGNITUDE in size. Readers refuse anything else where they read it, at its
position, so nothing downstream meets a number it cannot take: ``float()`` of a bigger
int overflows, and Python will not even convert an int of over 4300 decimal digits to
or from text (``json.dumps`` of a descriptor, an error message). The size of an integer
written in digits is judged before converting it.
"""

from __future__ import annotations

import math
import sys

MAX_MAGNITUDE = int(sys.float_info.max)  # the largest finite double, about 1.8e308
_MAX_DIGITS = {2: MAX_MAGNITUDE.bit_length(), 8: len(f"{MAX_MAGNITUDE:o}"),
               10: len(str(MAX_MAGNITUDE)), 16: len(f"{MAX_MAGNITUDE:x}")}
_SHOWN_CHARS = 24
_WHY = "a number must fit in a double (at most about 1.8e308)"


class NumberError(ValueError):
    """A number out of range (its message says which, and why)."""


def parse_int(text: str, base: int = 10, *, shown: str | None = None) -> int:
    """``text`` (an optional sign, then digits of ``base``) as an int; NumberError when
    it is over MAX_MAGNITUDE (its message shows ``shown``, else ``text``). ValueError
    when it is no such number."""
    digits = text.lstrip("+-")
    if len(text) - len(digits) > 1 or not digits:
        raise ValueError(f"not an integer: {text!r}")
    significant = digits.lstrip("0")
    value = int(significant or "0", base) if len(significant) <= _MAX_DIGITS[base] else None
    if value is None or value > MAX_MAGNITUDE:
        raise NumberError(too_large(shown or text))
    return -value if text.startswith("-") else value


def parse_float(text: str) -> float:
    """``text`` as a float; NumberError when it overflows a double (``1e400``)."""
    value = float(text)
    if not math.isfinite(value):
        raise NumberError(too_large(text))
    return value


def number_problem(value: object) -> str | None:
    """Why ``value`` is not a number a double can hold; None when it is, or is no number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > MAX_MAGNITUDE:
        digits = int(value.bit_length() * math.log10(2)) + 1  # str() may be refused
        return f"an integer of about {digits} digits is too large: {_WHY}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a JSON number (it has no infinity or NaN)"
    return None


def too_large(shown: str) -> str:
    return f"{brief(shown)} is too large: {_WHY}"


def brief(text: str) -> str:
    """``text`` shortened for a message: a number of 5000 digits is not worth quoting."""
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:10]}…{text[-6:]} ({len(text)} characters)"
