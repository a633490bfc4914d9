"""The JavaScript harness sees every timer a call leaves pending, however it was started,
and also on a node where its prototype watch does not hold (it falls back to async_hooks).
The harness runs here as a plain node process, outside any sandbox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.sandbox.process import HARNESS_DIR

ACTORS = Path(__file__).parent / "actors"
NODE = shutil.which("node") or "node"
# Preloaded, this makes the harness's accessor on Timeout.prototype impossible to define.
PIN_IDLE_START = """
const timeout = setTimeout(() => {}, 0);
clearTimeout(timeout);
Object.defineProperty(Object.getPrototypeOf(timeout), '_idleStart',
                      { value: null, writable: true, configurable: false });
"""
LINGERING = ["timer", "immediate", "unref_timeout", "unref_immediate", "promise_timeout",
             "promise_immediate", "esm_promise_timeout", "abort_timeout"]
ENDED = ["cleared", "fired", None]

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


class Harness:
    """node harness.js over two pipes; one call line in, its reply lines out. Never with
    --self-reset, nor a reset message: outside a sandbox, its /tmp is this machine's."""

    def __init__(self, preload: Path | None) -> None:
        to_harness, self._write = os.pipe()
        self._read, from_harness = os.pipe()
        args = [NODE, *(["--require", str(preload)] if preload else []),
                str(HARNESS_DIR / "harness.js"), str(to_harness), str(from_harness),
                str(ACTORS / "counter.js"), "process"]
        self.proc = subprocess.Popen(args, pass_fds=(to_harness, from_harness),
                                     stdin=subprocess.DEVNULL)
        os.close(to_harness)
        os.close(from_harness)
        self._lines = os.fdopen(self._read, "rb")
        assert self.next() == {"type": "loading"}  # the script's load is timed from here
        assert self.next() == {"type": "ready"}

    def next(self) -> dict[str, Any]:
        self.line = self._lines.readline()
        assert self.line, "the harness closed its channel"
        return json.loads(self.line)

    def call(self, linger: str | None) -> dict[str, Any]:
        message = {"type": "call", "actor_id": "counter", "payload": {"linger": linger},
                   "config": {}, "state": {}, "timestamp": 0}
        os.write(self._write, json.dumps(message).encode() + b"\n")
        return self.next()

    def close(self) -> None:
        os.close(self._write)
        self._lines.close()
        self.proc.wait(timeout=10)


@pytest.fixture(params=["prototypes", "async_hooks"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    preload = None
    if request.param == "async_hooks":
        preload = tmp_path / "pin.js"
        preload.write_text(PIN_IDLE_START)
    started = Harness(preload)
    yield started
    started.close()


@pytest.mark.parametrize("linger", LINGERING)
def test_a_timer_left_pending_marks_the_call_lingering(harness: Harness, linger: str) -> None:
    reply = harness.call(linger)
    assert (reply["type"], reply.get("lingering")) == ("result", True)


def test_timers_that_ended_in_their_call_leave_no_trace(harness: Harness) -> None:
    replies = [harness.call(linger) for linger in ENDED]
    assert [(r["type"], r["return"], "lingering" in r) for r in replies] == [
        ("result", {"calls": n}, False) for n in (1, 2, 3)]


def test_the_result_line_is_what_json_stringify_writes_for_the_reply(harness: Harness) -> None:
    harness.call("cleared")
    assert harness.line == b'{"type":"result","return":{"calls":1},"state":{}}\n'
    harness.call("timer")
    assert harness.line == \
        b'{"type":"result","return":{"calls":2},"state":{},"lingering":true}\n'
