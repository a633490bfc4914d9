"""Logging setup: text or JSON lines on stderr, at the configured level."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

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

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": bounded(record.getMessage()),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _ServiceHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log says nothing the per-call log line does not.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
