"""The contract every sandbox backend implements (one file per backend beside this one).

A backend boots *workers*: one isolated sandbox holding one actor's script,
able to run calls one after another. The host speaks to the in-sandbox harness
(``service/sandbox/harness/``) over a private channel that the script's own
stdout/stderr can never corrupt: one JSON object per line.

Host -> harness:
    {"type": "call", "actor_id", "payload", "config", "state", "timestamp", "fence"?,
     "persistent"?}
    {"type": "reset"}   # kill the script's leftover processes, wipe /tmp; answered by "ready"
``fence`` (alphanumeric, optional): before its result or error the harness writes it as
a line on its real fds 1 and 2, so the host knows it has read everything the script
wrote there (os.write, subprocesses) during the call. A host that reads those fds as
pipes needs none: the harness writes its result after the script's writes, so once the
result is in, what the pipes still hold (FIONREAD) is the rest (process, gVisor).
Harness -> host, during a call, in the order they happen:
    {"type": "output", "port", "data"}      # each send_output, as it is sent
    {"type": "log", "stream": "stdout"|"stderr", "message"}
    {"type": "result", "return", "state", "lingering"?}   # process() returned; the call is over
``lingering: true``: threads or timers of the script still run; the worker must not be reused.
    {"type": "error", "error_type", "message", "traceback", "resource"?}
Harness -> host, once at boot, just before the script's own code starts running:
    {"type": "loading"}
The host gives the interpreter and the sandbox ``BOOT_TIMEOUT_S`` (the backend's) until
then, and the script's load (its top-level code) the actor's ``limits.timeout_s`` from then
on: over it the worker is killed and the call that waited for it fails -32005. Only the
first ``loading`` counts (the script runs after it and can write lines too).
Harness -> host, once after boot and after each reset: {"type": "ready"} (with self-reset:
right after the result, in the same write)

Persistent state (``"persistent": true`` in the call; ``state`` is then ``{}``): the
script's state operations are requests to the host, answered on the harness's input fd
while the call runs (the harness waits for the reply; ids count up per worker):
    harness -> host  {"type": "state", "id": N, "op": "get"|"set"|"delete"|"increment"|
                      "decrement"|"push"|"pop"|"extend", "key", "value"?, "amount"?, "values"?}
    host -> harness  {"type": "state_reply", "id": N, "ok": true, "value", "found"?}
                     {"type": "state_reply", "id": N, "ok": false, "error_type", "message"}
``ok: false``: the operation cannot apply (the script gets an exception). A budget overrun
or a store that is down fails the call (-32006 / -32009) and the sandbox is killed, with no
reply. Every backend answers them through :class:`StateRequests` (``service/state/session.py``
serves them), which first holds each message to what a harness sends (see there). Without
``persistent`` the harness keeps the state itself (inline state) and sends none.
With ``--self-reset`` the harness also resets by itself after writing a call's result or
error, before it reads the next message, and then says ``ready`` unasked; a harness that
cannot exits instead. The host does not trust that reset (the script can patch the
harness): the process backend checks from outside, before the worker serves again, that
no process but the harness is left, /tmp is empty, and, while idle, that the sandbox uses
no CPU, starts no task and writes no byte on any channel (any of it kills the worker).
Harness command line: IN_FD OUT_FD SCRIPT ENTRYPOINT [--own-pidns] [--self-reset] [--path=DIR]
(see the harnesses). ``--path=DIR`` (Python): put DIR on sys.path ahead of site-packages.

An actor with dependencies has its built cache entry mounted read-only at
``dependency_mount`` (``/deps`` for Python, ``/node_modules`` for JavaScript, where
node's resolution from ``/actor`` finds it for both ``require`` and ``import``).

Workers enforce every limit of ``ActorDef.limits`` themselves (time, memory,
pids, output bytes...) and raise the matching RpcError. After ``call`` raises,
for whatever reason, the worker is dead and must not be reused.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from service import jsonfast
from service.errors import ActorFailed, ResourceLimitExceeded, SandboxUnavailable
from service.eventloop import HEAVY_FRAME, heavy_turn
from service.heap import HEAP
from service.manifest.model import ActorDef
from service.settings import StateSettings

MIB = 1 << 20
CHUNK = 1 << 16  # raw output read at once; a longer unfinished line goes out in pieces
DEPS_MOUNTS = {"python": ("lib", "/deps"), "javascript": ("node_modules", "/node_modules")}


def dependency_mount(actor: ActorDef, backend: str) -> tuple[Path, str] | None:
    """(host folder, sandbox path) of the actor's built dependencies; None without any."""
    if actor.dependencies is None:
        return None
    if actor.deps_entry is None:  # the runtime builds before it starts workers
        raise SandboxUnavailable(backend, f"the dependencies of {actor.id} are not built "
                                 "(run `service build`)")
    payload, inside = DEPS_MOUNTS[actor.language]
    return actor.deps_entry / payload, inside


def harness_path_flags(actor: ActorDef) -> list[str]:
    """The harness flags that put the Python dependencies on sys.path."""
    if actor.dependencies is None or actor.language != "python":
        return []
    return [f"--path={DEPS_MOUNTS['python'][1]}"]


class StateOps(Protocol):
    """Serves one call's ``state`` messages (implemented by service.state.session)."""

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """The ``state_reply`` to send back; raises RpcError to fail the call."""
        ...


@dataclass(frozen=True)
class CallRequest:
    actor_id: str
    payload: dict[str, Any]
    config: dict[str, Any]
    state: dict[str, Any]
    timestamp: Any
    state_ops: StateOps | None = None  # persistent state: the call's session with the store


@dataclass(frozen=True)
class OutputEvent:
    port: str
    data: Any


@dataclass(frozen=True)
class LogEvent:
    stream: str  # "stdout" or "stderr"
    message: str


Event = OutputEvent | LogEvent
# Called for each event as it arrives. It may raise an RpcError (e.g. OutputInvalid):
# the worker then kills its sandbox and re-raises that error from `call`.
EventSink = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class CallOutcome:
    return_value: Any
    state: dict[str, Any]


def encode_line(message: dict[str, Any]) -> bytes:
    """One protocol line to the harness. ASCII JSON: a lone surrogate (legal JSON text)
    stays an escape, which UTF-8 could not carry. (orjson writes it where it writes the
    same value: a payload of kilobytes costs a tenth; see service/jsonfast.py.)"""
    fast = jsonfast.dumps_ascii(message)
    if fast is not None:
        return fast + b"\n"
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


class NestedTooDeeply(ValueError):
    """A line holding JSON nested deeper than this process can decode."""


def decode_line(line: bytes | str) -> Any:
    """One line from the harness as JSON. ValueError for anything that is not JSON for this
    protocol: non-finite numbers (jsonfast.strict_loads); NestedTooDeeply for a value nested
    deeper than orjson's 1024 levels and this process's stack (the reader must never die of
    it). A harness writes what its own stack allows, deeper than ``json`` could follow here:
    orjson reads it (same_depth=False) and refuses non-finite numbers itself, so only the
    lines it cannot read go through the strict reference."""
    try:
        return jsonfast.loads(line, jsonfast.strict_loads, same_depth=False)
    except RecursionError:
        raise NestedTooDeeply("a JSON value nested too deeply to decode") from None


async def call_line_in_turn(request: CallRequest, fence: str) -> bytes:
    """call_line; in a turn of the loop of its own (heavy_turn) for a call that came in a
    heavy frame (HEAVY_FRAME): many large calls that were ready together wrote theirs back
    to back (forty of 1 MiB: 1.5 s)."""
    if HEAVY_FRAME.get():
        await heavy_turn()
    return call_line(request, fence)


def call_line(request: CallRequest, fence: str) -> bytes:
    """The ``call`` line; the harness echoes ``fence`` to fds 1/2 before its reply."""
    message = {"type": "call", "actor_id": request.actor_id, "payload": request.payload,
               "config": request.config, "state": request.state,
               "timestamp": request.timestamp, "fence": fence}
    if request.state_ops is not None:
        message["persistent"] = True
    return encode_line(message)


STATE_ID_MAX = 1 << 53  # ids count up from 1 per worker (both harnesses): a safe JS integer
# What a state message of a harness holds besides its key and value(s): {"type":"state",
# "id":N,"op":"increment","key":"","amount":} and the like. The session charges the key
# and value bytes of each operation itself; the rest of a message is allowed for here.
STATE_ENVELOPE_BYTES = 96


class StateRequests:
    """The ``state`` messages of one call, held to what a harness sends before the session
    answers them (any backend). Every line on the channel is hostile input (a script can
    write to the harness's fd), and each reply is a write to the sandbox, so each message
    costs the call something bounded:

    - its ``id`` must be what both harnesses send, a counter from 1 (an int up to
      STATE_ID_MAX), else ProtocolError (-32004): nothing else is echoed back;
    - it counts against ``state.ops_per_call``, and its bytes beyond STATE_ENVELOPE_BYTES
      against ``state.bytes_per_call`` (-32006 ``state``), whatever the session does with
      it (an operation it refuses, an unknown one, costs as much);
    - in a call without persistent state no harness sends one: ProtocolError (-32004).
    """

    def __init__(self, request: CallRequest, limits: StateSettings) -> None:
        self._request = request
        self._ops_limit = limits.ops_per_call
        self._bytes_limit = limits.bytes_per_call
        self.ops = 0
        self.bytes = 0

    async def reply(self, message: dict[str, Any], size: int) -> bytes:
        """The reply line to ``message``, which took ``size`` bytes on the channel (UTF-8);
        RpcError fails the call (the worker is then killed, with no reply)."""
        op_id = message.get("id")
        if type(op_id) is not int or not 0 < op_id <= STATE_ID_MAX:
            what = op_id if type(op_id) is int else type(op_id).__name__  # never echoed whole
            raise ActorFailed("ProtocolError", f"a state request whose id is not a counter "
                              f"from 1: {str(what)[:40]}")
        self.ops += 1
        if self.ops > self._ops_limit:
            raise ResourceLimitExceeded("state", {"ops": self._ops_limit})
        self.bytes += max(0, size - STATE_ENVELOPE_BYTES)
        if self.bytes > self._bytes_limit:
            raise ResourceLimitExceeded("state", {"bytes": self._bytes_limit})
        if self._request.state_ops is None:
            raise ActorFailed("ProtocolError", "a state request in a call without persistent "
                              "state")
        return encode_line(await self._request.state_ops.handle(message))


def harness_failure(message: dict[str, Any]) -> ActorFailed:
    """The ActorFailed of a harness ``error`` message (the script raised)."""
    return ActorFailed(str(message.get("error_type") or "Error"),
                       str(message.get("message") or ""), str(message.get("traceback") or ""))


REQUEST_ID_BYTES = 12  # the request id each notification carries, as counted (unknown here)
# what the runtime adds to an output: ,"seq":N,"timestamp":MS (7 digits of seq counted)
OUTPUT_EXTRA_BYTES = len(',"seq":,"timestamp":') + 7 + 13


def notification_size(method: str, actor_id: str, body_bytes: int) -> int:
    """The bytes of an ``output``/``log`` notification on the wire, as the server encodes it
    (ASCII JSON), whose params other than request_id, actor_id (and an output's seq and
    timestamp) take ``body_bytes``."""
    return _envelope_bytes(method, actor_id) + body_bytes


@functools.lru_cache(maxsize=1024)  # per loaded actor and method: charged on every event
def _envelope_bytes(method: str, actor_id: str) -> int:
    envelope = json.dumps({"jsonrpc": "2.0", "method": method,
                           "params": {"request_id": "", "actor_id": actor_id}},
                          separators=(",", ":"))
    extra = OUTPUT_EXTRA_BYTES if method == "output" else 0
    return len(envelope) - 2 + REQUEST_ID_BYTES + 1 + extra  # "" out, id, ","


def log_size(actor_id: str, stream: str, message: str) -> int:
    """The wire size of the ``log`` notification of one line."""
    # encode_basestring_ascii is what json.dumps(message) runs, without its call overhead
    body = len(stream) + len(encode_basestring_ascii(message)) + len('"stream":"","message":')
    return notification_size("log", actor_id, body)


class OutputBudget:
    """What a call may still send back (outputs, logs, return, state): limits.output_bytes,
    and at most ``max_notifications`` output/log notifications.

    The server holds a call's outputs and its result decoded until it answers (the
    response lists them all), and decoding multiplies JSON's size: ``[{}, {}, ...]`` takes
    ~25 times its bytes. So what the decoded values would take (jsonfast.decoded_size) is held
    to ``hold_limit``, the actor's own memory: a script building them itself would have
    needed as much. A line that would go past it is refused before it is decoded.
    """

    def __init__(self, limit: int, max_notifications: int | None = None,
                 hold_limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.max_notifications = max_notifications
        self.notifications = 0
        self.hold_limit = hold_limit
        self.held = 0
        self.parked = 0  # of the values held, those parked out of the collector's reach

    def fits(self, line: bytes) -> int:
        """What decoding ``line`` would take; ResourceLimitExceeded (memory) when that, with
        what is held already, is over ``hold_limit``. Nothing is held yet (see hold)."""
        size = jsonfast.decoded_size(line)
        if self.hold_limit is not None and self.held + size > self.hold_limit:
            raise ResourceLimitExceeded("memory", self.hold_limit // MIB)
        return size

    def hold(self, size: int, parks: int) -> None:
        """Keep ``size`` (from fits) until the call ends: a decoded output or result; and the
        values parked out of the collector's reach since ``parks`` (HEAP.parks, read before
        decoding it), until ``release``."""
        self.held += size
        self.parked += HEAP.held_since(parks)

    def release(self) -> None:
        """The call ended: the parked values it held may be settled over (service/heap.py)."""
        HEAP.release(self.parked)
        self.parked = 0

    def spend(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise ResourceLimitExceeded("output", self.limit)

    def notify(self, size: int) -> None:
        """Charge one notification of ``size`` bytes on the wire."""
        self.notifications += 1
        if self.max_notifications is not None and self.notifications > self.max_notifications:
            raise ResourceLimitExceeded("output", {"notifications": self.max_notifications})
        self.spend(size)


@dataclass(frozen=True)
class Availability:
    backend: str
    ok: bool
    reason: str = ""  # why not, when not ok
    details: dict[str, Any] = field(default_factory=dict)  # e.g. which limit mechanisms


@runtime_checkable
class Worker(Protocol):
    """One booted sandbox for one actor."""

    @property
    def alive(self) -> bool: ...

    def claim(self) -> bool:
        """Take the idle worker for the call that follows at once: False when it is not alive
        (or, checked now, not clean), and the pool takes another."""
        ...

    async def call(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        """Run one call; raises RpcError (ActorFailed, TimeLimitExceeded, ...) on failure.

        Cancelling the task that awaits this kills the sandbox.
        """
        ...

    async def reset(self) -> None:
        """Make the worker ready for the next call (wipe its /tmp)."""
        ...

    async def close(self) -> None:
        """Kill the sandbox and free everything it held; idempotent."""
        ...


@runtime_checkable
class Backend(Protocol):
    name: str

    async def availability(self) -> Availability:
        """Check, for real, whether this backend can start sandboxes here."""
        ...

    async def start_worker(self, actor: ActorDef) -> Worker:
        """Boot a sandbox for ``actor``; raises SandboxUnavailable when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release whatever the backend holds (every worker is closed by its pool)."""
        ...


class LineSplitter:
    """Splits a sandbox's raw output into text lines (UTF-8, invalid bytes replaced).

    Each chunk is searched once for newlines: what waits is a partial line with none, so a
    long line is not scanned again as it grows. With ``piece``, a line longer than that
    goes out in pieces, bounding what waits, and the newline that ends it is no line of its
    own. ``strip_cr``: a final ``\r`` is dropped.
    """

    def __init__(self, piece: int | None = None, *, strip_cr: bool = False) -> None:
        self._pending = bytearray()
        self._piece = piece
        self._strip_cr = strip_cr
        self._split = False  # the last line went out in pieces

    @property
    def pending(self) -> int:
        """The bytes of the partial line that waits for its newline."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[str]:
        if self._split and data:  # the rest of a line sent in pieces
            self._split = False
            if data[:1] == b"\n":  # its end: no empty line
                data = data[1:]
        buffer = self._pending
        unscanned = len(buffer)
        buffer += data
        lines, start = [], 0
        while (end := buffer.find(b"\n", max(start, unscanned))) >= 0:
            lines.append(self._text(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if self._piece is not None and len(buffer) > self._piece:
            lines.append(self._text(buffer))
            buffer.clear()
            self._split = True
        return lines

    def flush(self) -> str | None:
        """The unterminated last line, if any (the output is complete)."""
        self._split = False
        if not self._pending:
            return None
        text = self._text(self._pending)
        self._pending.clear()
        return text

    def _text(self, line: bytes | bytearray) -> str:
        text = line.decode("utf-8", errors="replace")
        return text.rstrip("\r") if self._strip_cr else text


async def to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` to its end even when the caller is cancelled meanwhile, once or again
    (a second `cancel` of a call whose sandbox is booting, or its connection closing after
    one): what frees a sandbox finishes before its capacity and its uid count as free. A
    cancellation that came meanwhile is raised once the work is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled: the loop is closing
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
