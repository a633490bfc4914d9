"""Helpers of the load-and-fault test: the process tree, the sandbox killer, calls and clients.

Only descendants of the test process are ever signalled: they are found by walking
/proc from ``os.getpid()``, and each is killed through a pidfd opened after checking that
the pid still names the same process (its start time), so a reused pid is never hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from service.errors import RpcError
from service.runtime import Emit, Runtime

SANDBOX_COMMANDS = {"bwrap", "python3", "node"}
ACCEPTED_ERRORS = {-32004}  # actor failed: its sandbox was killed under it
RECEIVE_TIMEOUT_S = 60.0
LAST = "last"  # the id of a connection's last request (a cancel of nothing)

ManifestsFactory = Callable[[int], Path]  # max_queue -> folder of manifests


# --- processes and file descriptors ------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process as seen in /proc; (pid, start time) names it even after the pid is reused."""

    pid: int
    ppid: int
    start: int  # clock ticks after boot (field 22 of /proc/PID/stat)
    comm: str
    zombie: bool = field(default=False, compare=False)  # dead, not yet reaped by its parent


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return Proc(pid, int(fields[1]), int(fields[19]), comm, fields[0] in ("Z", "X"))


def descendants(root: int | None = None) -> list[Proc]:
    """Every living descendant of ``root`` (default: this process)."""
    by_parent: dict[int, list[Proc]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            by_parent[proc.ppid].append(proc)
    found, todo = [], [os.getpid() if root is None else root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def is_alive(proc: Proc) -> bool:
    """Is that very process still running? (A zombie is dead: only its parent may reap it.)"""
    now = _read_proc(proc.pid)
    return now is not None and now.start == proc.start and not now.zombie


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point to."""
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return fds


def kill(proc: Proc) -> bool:
    """SIGKILL ``proc`` if that very process still runs; True when the signal went out."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return False
    try:
        if not is_alive(proc):  # the pid now names another process
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


@dataclass
class Killer:
    """SIGKILLs a random sandbox process (bwrap, python3, node below us) every interval."""

    interval_s: float
    spare: str  # processes whose command line holds this are left alone
    rng: random.Random
    killed: Counter[str] = field(default_factory=Counter)
    seen: set[Proc] = field(default_factory=set)  # every sandbox process met: none may outlive

    def sandboxes(self) -> list[Proc]:
        procs = [p for p in descendants() if p.comm in SANDBOX_COMMANDS and not p.zombie]
        self.seen.update(procs)
        return [p for p in procs if self.spare not in cmdline(p.pid)]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            victims = self.sandboxes()
            if victims and not stop.is_set():
                victim = self.rng.choice(victims)
                if kill(victim):
                    self.killed[victim.comm] += 1


# --- the runtime, noting how each call ended ---------------------------------------------


class RecordingRuntime(Runtime):
    """The real runtime; it also notes how each call ended, by its timestamp (unique per call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[Any, list[str]] = defaultdict(list)

    async def process(self, actor_id: Any, payload: Any, config: Any = None, state: Any = None,
                      timestamp: Any = None, emit: Emit | None = None) -> dict[str, Any]:
        try:
            result = await super().process(actor_id, payload, config, state, timestamp, emit)
        except asyncio.CancelledError:
            self.outcomes[timestamp].append("cancelled")
            raise
        except RpcError as exc:
            self.outcomes[timestamp].append(str(exc.CODE))
            raise
        except BaseException:
            self.outcomes[timestamp].append("internal")
            raise
        self.outcomes[timestamp].append("ok")
        return result


# --- calls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One `process` call and the exact result the example actor must give."""

    id: str
    timestamp: int  # unique: how the server-side record is found
    actor_id: str
    payload: dict[str, Any]
    config: dict[str, Any]
    state: dict[str, Any]
    sent: tuple[tuple[str, Any], ...]  # (port, data) in order
    returned: Any

    def frame(self) -> str:
        params = {"actor_id": self.actor_id, "payload": self.payload, "config": self.config,
                  "state": self.state, "timestamp": self.timestamp}
        return json.dumps({"jsonrpc": "2.0", "method": "process", "id": self.id,
                           "params": params})

    def expected_state(self) -> dict[str, Any]:
        if self.actor_id == "counter":
            return {**self.state, "count": self.state["count"] + 1}
        return self.state

    def problems(self, response: dict[str, Any], outputs: list[dict[str, Any]]) -> list[str]:
        """What is wrong with the answer (and the output notifications before it)."""
        if set(response) != {"jsonrpc", "id", "result"} and set(response) != {
                "jsonrpc", "id", "error"}:
            return [f"{self.id}: not a response: {response}"]
        if "error" in response:
            code = response["error"].get("code")
            return [] if code in ACCEPTED_ERRORS else [f"{self.id} ({self.actor_id}): {response}"]
        emitted = [{"port": p, "data": d, "seq": n} for n, (p, d) in enumerate(self.sent)]
        result = response["result"]
        want = {"outputs": dict(self.sent), "emitted": emitted, "return": self.returned,
                "state": self.expected_state()}
        problems = [f"{self.id} ({self.actor_id}): {k} {result.get(k)!r} != {v!r}"
                    for k, v in want.items() if result.get(k) != v]
        notified = [{"port": o["port"], "data": o["data"], "seq": o["seq"]} for o in outputs]
        if notified != emitted:
            problems.append(f"{self.id}: output notifications {notified} != emitted {emitted}")
        return problems


def plan_calls(conn: int, count: int, rng: random.Random) -> list[Call]:
    """``count`` calls across doubler, doubler_js, counter and ticker."""
    calls = []
    for n in range(count):
        call_id, timestamp = f"c{conn}-{n}", conn * 1_000_000 + n + 1
        kind = rng.choice(["doubler", "doubler", "doubler_js", "counter", "ticker"])
        value = rng.randint(-(10**6), 10**6)
        if kind in ("doubler", "doubler_js"):
            calls.append(Call(call_id, timestamp, kind, {"input": value}, {}, {},
                              (("output", 2 * value),), {"status": "completed"}))
        elif kind == "counter":
            factor, count_so_far = rng.randint(-5, 5), rng.randint(0, 1000)
            calls.append(Call(call_id, timestamp, kind, {"value": value}, {"factor": factor},
                              {"count": count_so_far, "note": call_id},
                              (("result", value * factor), ("calls", count_so_far + 1)),
                              {"status": "completed", "calls": count_so_far + 1}))
        else:
            ticks = rng.randint(0, 20)
            calls.append(Call(call_id, timestamp, kind, {"count": ticks}, {}, {},
                              tuple(("tick", t) for t in range(1, ticks + 1)),
                              {"status": "completed", "sent": ticks}))
    return calls


# --- clients -----------------------------------------------------------------------------


@dataclass
class Report:
    """What one connection saw: how each call was answered, and every problem."""

    sent: dict[str, int] = field(default_factory=dict)  # call id -> its timestamp
    answered: dict[str, str] = field(default_factory=dict)  # call id -> "ok" or the error code
    problems: list[str] = field(default_factory=list)
    unanswered: list[Call] = field(default_factory=list)  # in flight when the connection dropped


class CallStream:
    """One connection's calls: at most ``depth`` in flight, each answer checked as it comes."""

    def __init__(self, ws: ClientWebSocketResponse, calls: list[Call], depth: int) -> None:
        self.ws = ws
        self.todo = list(reversed(calls))
        self.depth = depth
        self.pending: dict[str, Call] = {}
        self.outputs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.report = Report()
        self.last_seen = False

    async def send_next(self) -> Call | None:
        if not self.todo:
            return None
        call = self.todo.pop()
        self.pending[call.id] = call
        self.report.sent[call.id] = call.timestamp
        await self.ws.send_str(call.frame())
        return call

    async def fill(self) -> None:
        while len(self.pending) < self.depth and await self.send_next() is not None:
            pass

    async def receive(self) -> dict[str, Any]:
        """Take in the next message; returns it (answers are checked and recorded)."""
        msg = await self.ws.receive(timeout=RECEIVE_TIMEOUT_S)
        assert msg.type == WSMsgType.TEXT, f"{msg.type} {msg.data!r}"
        message: dict[str, Any] = json.loads(msg.data)
        if message.get("method") == "output":
            request_id = message["params"]["request_id"]
            if request_id not in self.pending:
                self.report.problems.append(f"output for no call in flight: {message}")
            self.outputs[request_id].append(message["params"])
        elif "method" in message:
            self.report.problems.append(f"unexpected notification {message}")
        else:
            self._answer(message)
        return message

    def _answer(self, response: dict[str, Any]) -> None:
        if response.get("id") == LAST and not self.last_seen:
            self.last_seen = response == {"jsonrpc": "2.0", "result": {"cancelled": False},
                                          "id": LAST}
            return
        call = self.pending.pop(str(response.get("id")), None)
        if call is None:
            self.report.problems.append(f"answer to no call in flight (twice?): {response}")
            return
        self.report.problems += call.problems(response, self.outputs.pop(call.id, []))
        error = response.get("error")
        self.report.answered[call.id] = "ok" if error is None else str(error.get("code"))


async def live_connection(client: TestClient, calls: list[Call], depth: int) -> Report:
    """Make every call; at the end a last request proves nothing else is still coming."""
    ws = await client.ws_connect("/")
    stream = CallStream(ws, calls, depth)
    try:
        await stream.fill()
        while stream.pending:
            message = await stream.receive()
            if "method" not in message:
                await stream.fill()
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "cancel", "params": ["none"],
                                      "id": LAST}))
        while not stream.last_seen:
            await stream.receive()  # anything before its answer is judged (a problem) there
    finally:
        await ws.close()
    return stream.report


async def dropping_connection(client: TestClient, calls: list[Call], streamer: Call,
                              depth: int) -> Report:
    """Calls, then one that runs until the end: as soon as it runs, drop the socket."""
    ws = await client.ws_connect("/")
    stream = CallStream(ws, [*calls, streamer], depth)
    await stream.fill()
    while not stream.outputs.get(streamer.id):
        message = await stream.receive()
        if "method" not in message:
            await stream.fill()
    stream.report.unanswered = list(stream.pending.values())
    sock = ws.get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)  # abrupt: no closing handshake, calls still in flight
    with contextlib.suppress(Exception):
        await ws.close()
    return stream.report
