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
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

FIELDS_ATTR = "service_fields"
# Per connection, not per process: a ContextVar is copied into every task the handler starts.
CONNECTION: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "service_connection", default=None)


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call whose values become top-level JSON fields."""
    return {FIELDS_ATTR: values}


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc_info when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        connection = getattr(record, "service_connection", None)
        if connection:
            entry.update(connection)
        entry.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _ServiceHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second setup replaces it."""

    def emit(self, record: logging.LogRecord) -> None:
        # Read here, in the task that logs: the connection this record belongs to.
        record.service_connection = CONNECTION.get()
        super().emit(record)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log says nothing the per-call log line does not.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
