"""Logging setup: JSON lines or text, at the configured level, installed once."""

from __future__ import annotations

import io
import json
import logging

import pytest

import service.log
from service.log import TEXT_FORMAT, TextFormatter, setup_logging


def test_json_lines() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log = logging.getLogger("service.test")
    log.debug("hidden")
    log.info("call %s took %d ms", "doubler", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("info", "service.test", "call doubler took 3 ms"),
        ("error", "service.test", "failed")]
    assert lines[0]["ts"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exc_info"]


def test_text_and_a_second_setup_replaces_the_first() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", first)
    setup_logging("debug", "text", second)
    logging.getLogger("service.test").debug("shown once")
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("DEBUG service.test: shown once")
    assert second.getvalue().count("\n") == 1


def test_fields_and_the_connection_become_top_level_json() -> None:
    from service.log import CONNECTION, fields

    stream = io.StringIO()
    setup_logging("info", "json", stream)
    log = logging.getLogger("service.test")
    log.info("process actor=%s", "a", extra=fields(actor="a", outcome="ok", duration_ms=1.5))
    token = CONNECTION.set({"connection": 7, "peer": "127.0.0.1"})
    try:
        log.info("inside a connection")
    finally:
        CONNECTION.reset(token)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "process actor=a"
    assert (first["actor"], first["outcome"], first["duration_ms"]) == ("a", "ok", 1.5)
    assert "connection" not in first
    assert (second["connection"], second["peer"]) == (7, "127.0.0.1")


def test_rate_limit_holds_back_and_counts() -> None:
    from service.log import RateLimit

    now = [0.0]
    limit = RateLimit(10, clock=lambda: now[0])
    assert limit.allow("a") == 0
    assert [limit.allow("a") for _ in range(3)] == [None, None, None]
    assert limit.allow("b") == 0  # keys are independent
    now[0] = 10.0
    assert limit.allow("a") == 3  # the line that goes out says how many were held back
    assert limit.allow("a") is None


def test_text_lines_escape_what_clients_send() -> None:
    """An actor_id with a newline once forged a whole log line."""
    stream = io.StringIO()
    setup_logging("info", "text", stream)
    log = logging.getLogger("service.test")
    log.info("process actor=%s", "x\n2026-01-01 00:00:00,000 INFO service.server: forged\x1b[2K")
    try:
        raise ValueError("bad value\n2026-01-01 00:00:00,000 INFO service.server: forged too")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert "actor=x\\n2026-01-01 00:00:00,000 INFO service.server: forged\\x1b[2K" in lines[0]
    assert lines[1].endswith("ERROR service.test: failed")
    assert all(line.startswith("  ") for line in lines[2:]), lines
    assert lines[-1] == "  2026-01-01 00:00:00,000 INFO service.server: forged too"


def test_a_huge_client_value_is_cut() -> None:
    for fmt in ("text", "json"):
        stream = io.StringIO()
        setup_logging("info", fmt, stream)
        logging.getLogger("service.test").info("process actor=%s", "x" * 1_000_000)
        assert len(stream.getvalue()) < 9000
        assert "(991822 more characters)" in stream.getvalue()


def test_the_text_format_does_not_depend_on_the_format_constant(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text line goes through logging.Formatter (its second's time stamp cached):
    the same line whatever the module's format constant says, escapes included."""
    formatter = TextFormatter(TEXT_FORMAT)
    messages = [("call %s took %.1f ms", ("doubler", 0.81)), ("x" * 9000, ()),
                ("evil %s", ("a\nb\r\x1b[2J\u2028",)), ("plain", ())]
    for created in (1764151200.123, 1764151200.999, 1764151201.0005):
        for msg, args in messages:
            record = logging.LogRecord("service.t", logging.WARNING, "f", 1, msg, args, None)
            record.created, record.msecs = created, (created - int(created)) * 1000
            fast = formatter.format(record)
            with monkeypatch.context() as patched:
                patched.setattr(service.log, "TEXT_FORMAT", "not the format")
                general = formatter.format(record)
            assert fast == general
            assert "\n" not in fast
    assert formatter.format(logging.LogRecord("n", logging.INFO, "f", 1, "m", (), None)) \
        .endswith(" INFO n: m")
