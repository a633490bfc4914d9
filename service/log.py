"""Logging setup: text or JSON lines on stderr, at the configured level.

Structured fields: ``log.info(msg, args, extra=fields(actor=..., outcome=...))`` puts them at
the top level of a JSON line (the text format shows the message only, so say them there
too). The fields of :data:`CONNECTION` (connection id, peer), set by the server for each
WebSocket connection, are added to every record logged while serving it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

FIELDS_ATTR = "service_fields"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Per connection, not per process: a ContextVar is copied into every task the handler starts.
CONNECTION: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "service_connection", default=None)


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call whose values become top-level JSON fields."""
    return {FIELDS_ATTR: values}


def log_fast(logger: logging.Logger, level: int, msg: str, args: tuple[Any, ...],
             extra: dict[str, Any] | None = None) -> None:
    """``logger.log(level, msg, *args, extra=extra)`` without its walk up the stack for the
    caller's file and line, which no format here shows: for a line logged on every call."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args,
                                        None, extra=extra))


class _SecondStamp:
    """The formatted time of a record's second, computed once per second (a busy server
    logs many lines per second; strftime is a good part of formatting one)."""

    def __init__(self, fmt: str, convert: Callable[[float | None], time.struct_time]) -> None:
        self._fmt = fmt
        self._convert = convert
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached_second, stamp = self._cached
        if second != cached_second:
            stamp = time.strftime(self._fmt, self._convert(created))
            self._cached = (second, stamp)
        return stamp


class RateLimit:
    """At most one record per key per ``interval_s``; says how many were held back meanwhile.

    For lines a client can cause at will (a refused call, a failed login): an overload or a
    scan must not become gigabytes of log. Keys must be few (actor ids, not peers)."""

    def __init__(self, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: do not log this one. Otherwise log it, with this many held back before it."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


# Characters that could end a log line or rewrite a terminal: C0 controls but tab, DEL, C1
# controls, and the Unicode line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
# A message holds client values (a 1 MB actor id fits in a frame): one record stays readable,
# and a client cannot turn each request into a megabyte of log.
MAX_MESSAGE_CHARS = 8192


def bounded(text: str) -> str:
    """``text``, cut to MAX_MESSAGE_CHARS with a note saying how much was left out."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"


def escape_control(text: str) -> str:
    """``text`` with every line-breaking or control character written as an escape (one line)."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}")
                       if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class TextFormatter(logging.Formatter):
    """Plain text whose message stays on one line, whatever a client put in its arguments.

    Messages carry client-controlled values (actor ids, request ids, paths): a newline in one
    would forge a log line. A traceback keeps its lines, each indented.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._stamp = _SecondStamp(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """What logging.Formatter writes (local time, then milliseconds), its second cached."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._stamp(record.created)},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(bounded(record.message))
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        """The record, then its traceback indented: an exception message holding client text
        and a newline cannot start a line that looks like a record (those never start with
        a space). Formatted here, not cached on the record, which other handlers share."""
        exc_info, stack_info = record.exc_info, record.stack_info
        exc_text, record.exc_text = record.exc_text, None
        record.exc_info = record.stack_info = None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = exc_info, exc_text, stack_info
        if exc_info:
            text += "\n" + _indent(self.formatException(exc_info))
        if stack_info:
            text += "\n" + _indent(self.formatStack(stack_info))
        return text


def _indent(text: str) -> str:
    return "\n".join("  " + escape_control(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc_info when there is one)."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._stamp(record.created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": bounded(record.getMessage()),
        }
        connection = getattr(record, "service_connection", None)
        if connection:
            entry.update(connection)
        for key, value in (getattr(record, FIELDS_ATTR, None) or {}).items():
            entry[key] = bounded(value) if isinstance(value, str) else value  # client values
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _ServiceHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second setup replaces it."""

    def emit(self, record: logging.LogRecord) -> None:
        # Read here, in the task that logs: the connection this record belongs to.
        record.service_connection = CONNECTION.get()
        super().emit(record)


class _BadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse with the offending line quoted: a token in its
    query or its Authorization header would land in the log, at a client's will. Such a
    record says only what kind of request it was, once per 10 s at most."""

    def __init__(self) -> None:
        super().__init__()
        self._limit = RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        held = self._limit.allow(type(exc).__name__)
        if held is None:
            return False
        record.msg, record.args = "refused a request it cannot parse (%s)%s", (
            type(exc).__name__, f" ({held} more since the last line)" if held else "")
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No format here shows a record's thread or process: not looked up for every record
    # (logging's own switches, see "Optimization" in the logging HOWTO).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # aiohttp's access log says nothing the per-call log line does not.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequests) for f in server_log.filters):
        server_log.addFilter(_BadRequests())
