"""Harness for Python actors; runs INSIDE the sandbox under the system python3.

    python3 -I -B -u harness.py IN_FD OUT_FD SCRIPT ENTRYPOINT [--own-pidns] [--self-reset]
                                [--path=DIR]...

It says ``{"type": "loading"}`` on OUT_FD just before the script's own code runs (the
host times the script's load from there, against the actor's timeout_s), loads SCRIPT
once, says ``{"type": "ready"}``, then serves calls read from
IN_FD, one JSON object per line each way (the protocol of ``service/sandbox/base.py``).
``{"type": "reset"}`` wipes /tmp (and, with ``--own-pidns``, kills every other process of
the sandbox's pid namespace) and answers ``ready``. With ``--self-reset`` it does the same
by itself after each call, before its reply, and sends ``ready`` unasked in the same write
as the reply: the host saves a round trip. The host checks from outside that the reset
really happened. Each ``--path=DIR`` (the actor's dependencies, mounted read-only) goes on
sys.path ahead of site-packages, so the actor's pinned versions win over the system's.

Never run it outside a sandbox: a reset wipes whatever /tmp it sees (a developer's
benchmark of it on the host once emptied the host's /tmp), and with ``--own-pidns`` it
kills every process it may signal.

Stdlib only, and as few imports as possible so an idle worker stays small: asyncio is
imported only when the script uses it, traceback only when something failed.
"""

from __future__ import annotations

import _thread
import builtins
import gc
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

ERRNO_DISK = (27, 28, 122)  # EFBIG (RLIMIT_FSIZE), ENOSPC (/tmp full), EDQUOT
ERRNO_AGAIN = 11  # fork() or clone() refused: the pids limit
PARTIAL_LINE_MAX = 65_536  # an unterminated print longer than this is sent as it stands
TMP = "/tmp"
READY = b'{"type":"ready"}\n'
LOADING = b'{"type":"loading"}\n'
# The reply when even a short one could not be built (a huge message, no memory left).
NO_MEMORY = (b'{"type":"error","error_type":"MemoryError","message":"no memory left to report '
             b'the error","traceback":"","resource":"memory"}\n')
# The persistent store's rules (service/state/session.py, base.py), copied because nothing
# of the service is importable here: the inline handle refuses what the store refuses, with
# the same words (a unit test keeps the copies equal to the originals).
KEY_MAX_BYTES = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NOT_AN_INTEGER = "value is not an integer or out of range"
WOULD_OVERFLOW = "increment or decrement would overflow"


# JSON through the C accelerator the json package itself uses: `import json` pulls in re,
# enum and more, most of an interpreter's start-up time in a fresh sandbox. Same output
# and errors as json.dumps(..., ensure_ascii=..., allow_nan=False, separators=(",", ":"))
# and json.loads; the json package is imported only where _json cannot answer alone.
try:
    import _json
except ImportError:  # an interpreter without the accelerator: the json package does it all
    _json = None  # type: ignore[assignment]


def not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any, ensure_ascii: bool) -> str:
    """json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":"))"""
    if _json is None:
        import json

        return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=False,
                          separators=(",", ":"))
    escape = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    if isinstance(value, str):
        return escape(value)
    # A fresh markers dict each time: an encoding that failed midway leaves entries in it.
    chunks = _json.make_encoder({}, not_serializable, escape, None, ":", ",", False, False,
                                False)
    return "".join(chunks(value, 0))


class DecodeContext:
    """What json.JSONDecoder() gives its scanner: the defaults of json.loads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


SCAN = _json.make_scanner(DecodeContext()) if _json is not None else None  # type: ignore[arg-type]
JSON_SPACE = " \t\n\r"


def loads(data: bytes) -> Any:
    """json.loads(data): the same values, and the same errors (from json itself)."""
    if SCAN is not None:
        try:
            text = data.decode("utf-8")
            value, end = SCAN(text, 0)
            if not text[end:].strip(JSON_SPACE):
                return value
        except Exception:  # json.loads below says what is wrong, as it always did
            pass
    import json  # leading whitespace, a BOM, UTF-16, or an error to report

    return json.loads(data)


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line; raises TypeError/ValueError for anything that is not plain JSON."""
    text = dumps(message, ensure_ascii=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: legal JSON as an escape, not as UTF-8
        return dumps(message, ensure_ascii=True).encode("ascii") + b"\n"


def json_line(message: dict[str, Any], what: str) -> bytes:
    """encode(message), else the script's TypeError saying that ``what`` is not JSON: one
    exception type for NaN, a cycle (json's ValueError) or too deep a value (RecursionError),
    raised from None so that json's internals stay out of the script's traceback."""
    try:
        return encode(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{what} is not JSON: {exception_text(exc)}") from None


def exception_text(exc: BaseException) -> str:
    """str(exc), or what traceback shows when the exception's own __str__ raises."""
    try:
        return str(exc)
    except BaseException:  # a script's __str__ may raise anything, SystemExit included
        return "<exception str() failed>"


class Channel:
    """The private line channel to the host; safe to use from the script's threads."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.pid = os.getpid()  # a forked child of the script is not the harness
        self._lock = _thread.allocate_lock()
        self._pending = b""
        self._state_lock = _thread.allocate_lock()
        self._state_id = 0

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(encode(message))  # encoded first: a bad value writes nothing

    def send_bytes(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.out_fd, view):]

    def receive(self) -> Any:
        """The next message, or None when the host closed the channel."""
        while b"\n" not in self._pending:
            chunk = os.read(self.in_fd, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return loads(line)

    def state_op(self, message: dict[str, Any]) -> Any:
        """Ask the host for one state operation and wait for its reply (base.py protocol).

        Nothing else reads IN_FD during a call, so the reply is the next line.
        """
        if os.getpid() != self.pid:  # a forked child would steal the harness's replies
            raise RuntimeError("state operations only from the actor's own process")
        with self._state_lock:
            message["type"], message["id"] = "state", self._state_id + 1
            # values were checked already: what fails here is a key or amount (NaN, 10**5000)
            line = json_line(message, f"{message['op']}: the key or amount")
            self._state_id += 1
            self.send_bytes(line)
            reply = self.receive()
        if not isinstance(reply, dict) or reply.get("type") != "state_reply":
            os._exit(71)  # the host went away or broke the protocol: nothing sane to do
        if not reply.get("ok"):
            raise STATE_ERRORS.get(reply.get("error_type"), RuntimeError)(reply.get("message"))
        return reply


class BinaryLog:
    """``sys.stdout.buffer``: bytes are decoded and logged like text."""

    def __init__(self, text: LogStream) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        """Lines are sent as they complete."""


class LogStream:
    """``sys.stdout``/``sys.stderr``: every complete line becomes a ``log`` event.

    Sent on the channel, so logs keep their order with outputs. ``fileno()`` is the real
    fd, which the host reads too (for os.write and subprocesses).
    """

    encoding = "utf-8"
    errors = "replace"
    closed = False

    def __init__(self, channel: Channel, stream: str, fd: int) -> None:
        self._channel = channel
        self._stream = stream
        self._fd = fd
        self._buffer = ""
        self._split = False  # the last line went out in pieces: its newline is no empty line
        self._lock = _thread.allocate_lock()
        self.buffer = BinaryLog(self)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            rest = text
            if self._split and rest:
                self._split = False
                if rest[0] == "\n":
                    rest = rest[1:]
            lines = (self._buffer + rest).split("\n")
            self._buffer = lines.pop()
            if len(self._buffer) > PARTIAL_LINE_MAX:
                lines.append(self._buffer)
                self._buffer = ""
                self._split = True
            for line in lines:
                self._emit(line)
        return len(text)

    def writelines(self, lines: Iterator[str]) -> None:
        for line in lines:
            self.write(line)

    def end(self) -> None:
        """Send what is left of an unterminated last line (the call is over)."""
        with self._lock:
            if self._buffer:
                self._emit(self._buffer)
            self._buffer = ""
            self._split = False

    def _emit(self, line: str) -> None:
        self._channel.send({"type": "log", "stream": self._stream, "message": line})

    def flush(self) -> None:
        """Lines are sent as they complete; a partial one waits for its end."""

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


class Sent:
    """What ``send_output`` returns: the value is already with the host, awaiting is instant."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


SENT = Sent()
STATE_ERRORS: dict[Any, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError,
                                            "OverflowError": OverflowError}
MISSING = object()


class Done:
    """An awaitable that already holds its value: state operations finish before returning,
    so ``await`` works with or without an event loop."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Iterator[None]:
        return self.value
        yield  # a generator: awaiting it returns the value at once


class StoreState:
    """``context.get_state()`` on persistent state: every operation goes to the host's store."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def _op(self, op: str, key: Any, **args: Any) -> Any:
        return self._channel.state_op({"op": op, "key": key, **args})

    def read(self, key: Any, default: Any = None) -> Any:
        reply = self._op("get", key)
        return reply.get("value") if reply.get("found") else default

    def write(self, key: Any, value: Any, what: str = "set") -> None:
        check_json(value, f"{what}: value")  # TypeError here, in the script, before sending
        self._op("set", key, value=value)

    def get(self, key: Any, default: Any = None) -> Done:
        return Done(self.read(key, default))

    def set(self, key: Any, value: Any) -> Done:
        self.write(key, value)
        return Done(None)

    def delete(self, key: Any) -> Done:
        return Done(bool(self._op("delete", key).get("value")))

    def increment(self, key: Any, amount: int = 1) -> Done:
        return Done(self._op("increment", key, amount=amount).get("value"))

    def decrement(self, key: Any, amount: int = 1) -> Done:
        return Done(self._op("decrement", key, amount=amount).get("value"))

    def push(self, key: Any, value: Any) -> Done:
        check_json(value, "push: value")
        return Done(self._op("push", key, value=value).get("value"))

    def pop(self, key: Any) -> Done:
        return Done(self._op("pop", key).get("value"))

    def extend(self, key: Any, values: Any) -> Done:
        values = list(values)
        check_json(values, "extend: values")
        return Done(self._op("extend", key, values=values).get("value"))


class InlineState:
    """``context.get_state()`` on inline state: the same methods over the call's state dict,
    refusing what the store refuses (the same checks in the same order, the same exception
    types and words), so one script works both ways. A refused operation changes nothing."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def get(self, key: Any, default: Any = None) -> Done:
        return Done(self._state.get(state_key(key), default))

    def set(self, key: Any, value: Any) -> Done:
        check_json(value, "set: value")
        self._state[state_key(key)] = value
        return Done(None)

    def delete(self, key: Any) -> Done:
        return Done(self._state.pop(state_key(key), MISSING) is not MISSING)

    def increment(self, key: Any, amount: int = 1) -> Done:
        return Done(self._add(state_key(key), state_amount(amount, 1)))

    def decrement(self, key: Any, amount: int = 1) -> Done:
        return Done(self._add(state_key(key), state_amount(amount, -1)))

    def push(self, key: Any, value: Any) -> Done:
        check_json(value, "push: value")
        return Done(self._append(state_key(key), [value]))

    def pop(self, key: Any) -> Done:
        key = state_key(key)
        if key not in self._state:  # as in the store: nothing is written for a missing key
            return Done(None)
        items = self._list(key)
        first = items.pop(0) if items else None
        self._state[key] = items
        return Done(first)

    def extend(self, key: Any, values: Any) -> Done:
        values = list(values)  # any iterable, as the persistent handle takes
        check_json(values, "extend: values")
        return Done(self._append(state_key(key), values))

    def _add(self, key: str, amount: int) -> int:
        current = self._state.get(key, 0)
        if not is_int64(current):
            raise TypeError(NOT_AN_INTEGER)
        total = current + amount
        if not INT64_MIN <= total <= INT64_MAX:
            raise OverflowError(WOULD_OVERFLOW)
        self._state[key] = total
        return total

    def _append(self, key: str, values: list[Any]) -> int:
        items = self._list(key)
        items.extend(values)
        self._state[key] = items
        return len(items)

    def _list(self, key: str) -> list[Any]:
        """The list under ``key`` (a new one when there is none), as the store reads it: a
        tuple is a JSON array too."""
        items = self._state.get(key, [])
        if isinstance(items, tuple):
            items = list(items)
        if not isinstance(items, list):
            raise TypeError("the value under this key is not a list")
        return items


def check_json(value: Any, what: str) -> None:
    """The script's TypeError when ``value`` is not JSON (the store could not hold it)."""
    json_line({"v": value}, what)


def state_key(key: Any) -> str:
    """``key`` when the store would take it, else the store's error (session.py ``_key``)."""
    if not isinstance(key, str) or not key:
        raise TypeError("a state key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > KEY_MAX_BYTES:
        raise ValueError(f"a state key is at most {KEY_MAX_BYTES} bytes")
    if any(char < " " or "\x7f" <= char <= "\x9f" for char in key):  # Unicode's Cc
        raise ValueError("a state key must not contain control characters")
    if any("\ud800" <= char <= "\udfff" for char in key):  # no UTF-8 form: no Redis key
        raise ValueError("a state key must not contain lone surrogates (text that has no "
                         "UTF-8 form)")
    return key


def state_amount(amount: Any, sign: int) -> int:
    """``sign * amount`` when it is a 64-bit integer, else the store's error (session.py
    ``_amount``: so ``decrement(k, -2**63)``, whose negation is not, is refused)."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError("amount must be an integer")
    if not INT64_MIN <= sign * amount <= INT64_MAX:
        raise OverflowError("amount is out of the 64-bit range")
    return sign * amount


def is_int64(value: Any) -> bool:
    """What the store can increment: an integer (not a bool) of 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and \
        INT64_MIN <= value <= INT64_MAX


class Timestamp(int):
    """``context.timestamp`` (ms): a number, and callable as the origin docs' ``timestamp()``."""

    def __call__(self) -> int:
        return int(self)


def timestamp_of(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return Timestamp(value)
    return value


class Context:
    """The ``context`` an entrypoint receives (protocol.md, "The actor API")."""

    def __init__(self, channel: Channel, request: dict[str, Any]) -> None:
        self.actor_id = request.get("actor_id")
        self.timestamp = timestamp_of(request.get("timestamp"))
        self.payload: dict[str, Any] = request.get("payload") or {}
        self.config: dict[str, Any] = request.get("config") or {}
        self.state: dict[str, Any] = request.get("state") or {}
        self._channel = channel
        self._store: StoreState | InlineState = (
            StoreState(channel) if request.get("persistent") is True else InlineState(self.state))

    def get_input(self, port: str, default: Any = None) -> Any:
        return self.payload.get(port, default)

    def get_config(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def get_state(self, key: Any = MISSING, default: Any = None) -> Any:
        """``get_state()``: the state store handle; ``get_state(key, default)``: one value."""
        if key is MISSING:
            return self._store
        if isinstance(self._store, StoreState):
            return self._store.read(key, default)
        return self.state.get(key, default)

    def set_state(self, key: str, value: Any) -> None:
        if isinstance(self._store, StoreState):
            self._store.write(key, value, "set_state")
        else:  # refused at once, as the store refuses it (kept as given)
            check_json(value, "set_state: value")
            self.state[state_key(key)] = value

    def get_payload(self) -> dict[str, Any]:
        return self.payload

    def has_input(self, port: str) -> bool:
        return port in self.payload

    def send_output(self, port: str, data: Any) -> Sent:
        """Send now (awaiting the result is optional); raises TypeError for non-JSON data."""
        if not isinstance(port, str):
            raise TypeError(f"send_output: port must be a string, not {type(port).__name__}")
        line = json_line({"type": "output", "port": port, "data": data}, "send_output: data")
        self._channel.send_bytes(line)
        return SENT


def actor(*args: Any, **kwargs: Any) -> Any:
    """The origin's ``@actor({...})`` decorator (also bare ``@actor``): accepted, ignored."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda fn: fn


def add_paths(paths: list[str]) -> None:
    """Put ``paths`` before the first site-/dist-packages folder (after the stdlib)."""
    site = next((i for i, p in enumerate(sys.path)
                 if p.endswith(("site-packages", "dist-packages"))), len(sys.path))
    sys.path[site:site] = paths


def load_entry(script: str, entrypoint: str) -> Callable[..., Any]:
    """Run the script as module ``__actor__`` and return its entrypoint."""
    module = type(sys)("__actor__")
    module.__file__ = script
    sys.modules["__actor__"] = module  # dataclasses and pickle look classes up there
    sys.path.insert(0, os.path.dirname(script))
    sys.argv = [script]
    with open(script, "rb") as file:
        code = compile(file.read(), script, "exec")
    exec(code, module.__dict__)
    entry = module.__dict__.get(entrypoint)
    if not callable(entry):
        raise AttributeError(f"{os.path.basename(script)} defines no callable {entrypoint!r}")
    return entry


def uses_asyncio(entry: Callable[..., Any]) -> bool:
    """True when the script imported asyncio, or its entrypoint names it."""
    code = getattr(entry, "__code__", None)
    return "asyncio" in sys.modules or (code is not None and "asyncio" in code.co_names)


def finish(awaitable: Any, with_asyncio: bool) -> Any:
    """Await what an ``async def`` entrypoint returned."""
    if with_asyncio:
        import asyncio

        async def main() -> Any:
            return await awaitable

        return asyncio.run(main())
    steps = awaitable.__await__()  # no event loop needed: send_output never suspends
    while True:
        try:
            yielded = steps.send(None)
        except StopIteration as stop:
            return stop.value
        if yielded is not None:
            steps.close()
            raise RuntimeError("process() awaited something that needs an event loop; "
                               "import asyncio at the top of the script")


def resource_of(exc: BaseException | None) -> str | None:
    """Which limit an exception (or one it was raised from) points at, if any."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, MemoryError):
            return "memory"
        if isinstance(exc, OSError) and exc.errno in ERRNO_DISK:
            return "disk"
        if isinstance(exc, OSError) and exc.errno == ERRNO_AGAIN:
            return "pids"
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return "pids"
        exc = exc.__cause__ or exc.__context__
    return None


# The class's own name: a metaclass may make ``__name__`` a property that raises, not this.
TYPE_NAME = type.__dict__["__name__"]


def error_reply(exc: BaseException, script: str) -> dict[str, Any]:
    """The ``error`` message for what the script raised. Never raises itself, whatever the
    exception does (its __str__ may raise, its class may fake its name)."""
    reply: dict[str, Any] = {"type": "error", "error_type": TYPE_NAME.__get__(type(exc)),
                             "message": exception_text(exc), "traceback": ""}
    try:
        resource = resource_of(exc)
    except BaseException:  # its errno, __class__ or __cause__ may be the script's code
        resource = None
    if resource:
        reply["resource"] = resource
    try:  # noqa: SIM105 (contextlib is one import more in every worker)
        reply["traceback"] = script_traceback(exc, script)
    except BaseException:  # e.g. no memory left to format it: the type and message still go
        pass
    return reply


def error_line(exc: BaseException, script: str) -> bytes:
    """error_reply(...) encoded; a huge message may leave no memory to encode it."""
    try:
        return encode(error_reply(exc, script))
    except MemoryError:
        return NO_MEMORY


def script_traceback(exc: BaseException, script: str) -> str:
    """The traceback of ``exc`` from the script's first frame on, without the harness's own
    frames, in chained exceptions too (send_output's, a state handle's): actor-api.md
    promises only the script's, and of what it calls (its modules, the standard library)."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next  # the harness's and asyncio's frames say nothing to the author
    shown = traceback.TracebackException(type(exc), exc, tb)
    # This file as the sandbox has it: /harness/harness.py, or the compiled copy's source.
    harness = script_traceback.__code__.co_filename
    pending = [shown]
    while pending:  # a tree: TracebackException has cut the cycles of the chain
        item = pending.pop()
        item.stack = traceback.StackSummary.from_list(
            [frame for frame in item.stack if frame.filename != harness])
        pending += [e for e in (item.__cause__, item.__context__, *(item.exceptions or ()))
                    if e is not None]
    return "".join(shown.format())


def result_reply(value: Any, state: dict[str, Any], threads: int) -> bytes:
    """The encoded ``result`` line; TypeError when the return value or state is not JSON
    (each is encoded again only then, to say which)."""
    reply = {"type": "result", "return": value, "state": state}
    if threads > 1:  # the script's threads would run on between calls, with no time limit
        reply["lingering"] = True
    try:
        return encode(reply)
    except (TypeError, ValueError, RecursionError) as exc:
        failure = exc
    for what, item in (("return value", value), ("state", state)):
        try:
            encode({"v": item})
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(f"process() {what} is not JSON-serializable: "
                            f"{exception_text(exc)}") from None
    raise failure


class Threads:
    """How many threads this process runs: ``num_threads`` of /proc/self/stat, one pread
    of a file opened once (a system call costs ~30 us under gVisor's ptrace platform)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def count(self) -> int:
        try:
            stat = os.pread(self._fd, 4096, 0) if self._fd is not None else b""
            return int(stat[stat.rindex(b")") + 2:].split()[17])
        except (OSError, ValueError, IndexError):  # no /proc/self/stat, or not as expected
            pass
        try:
            return len(os.listdir("/proc/self/task"))
        except OSError:
            return 1


class TmpWatch:
    """Wipes /tmp only when it changed since it was last left empty. Adding, removing or
    renaming an entry, or setting its times, moves the folder's ctime (to a clock the
    script cannot set): an unchanged ``(ctime, mtime, inode)`` after a wipe means nothing
    was put there since, and one stat replaces a listing (~4 system calls). Before Linux
    6.13, tmpfs takes its times from a clock that ticks once a jiffy: a change in the same
    tick as the wipe would leave them unchanged, so a stamp counts once its ctime is older
    than any tick (SETTLE_NS)."""

    SETTLE_NS = 50_000_000

    def __init__(self, path: str) -> None:
        self.path = path
        self._clean: tuple[int, int, int] | None = None

    def _stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ctime_ns, st.st_mtime_ns, st.st_ino

    def wipe(self) -> None:
        if self._clean is not None and self._stamp() == self._clean:
            return
        wipe(self.path)
        stamp = self._stamp()
        self._clean = stamp if time.time_ns() - stamp[0] >= self.SETTLE_NS else None


def write_fences(fence: str) -> None:
    """Flush what the script left in the real stdout/stderr's buffers, then (with a fence)
    mark the end of this call there so the host knows it read all. Without one the host
    reads what those pipes hold once the reply is in (the process and gVisor backends)."""
    for stream, fd in ((sys.__stdout__, 1), (sys.__stderr__, 2)):
        try:
            if stream is not None:
                stream.flush()
            if fence:
                os.write(fd, fence.encode("ascii") + b"\n")
        except (OSError, ValueError):
            pass  # the script closed it; the host stops waiting after a grace period


class Harness:
    """The call loop of one worker."""

    def __init__(self, channel: Channel, script: str, entrypoint: str, own_pidns: bool,
                 self_reset: bool) -> None:
        self.channel = channel
        self.script = script
        self.own_pidns = own_pidns
        self.self_reset = self_reset
        self.streams = (LogStream(channel, "stdout", 1), LogStream(channel, "stderr", 2))
        self.threads = Threads()
        self.tmp = TmpWatch(TMP)
        sys.stdout, sys.stderr = self.streams
        builtins.actor = actor  # type: ignore[attr-defined]
        self.entry: Callable[..., Any] | None = None
        self.load_error: bytes | None = None
        channel.send_bytes(LOADING)  # what runs from here on is the script's: its time limit
        try:
            self.entry = load_entry(script, entrypoint)
        except BaseException as exc:  # reported to every call instead of killing the worker
            self.load_error = error_line(exc, script)
        # What the load made (the script's modules and libraries: ~20,000 objects for a few
        # of the standard library's, hundreds of thousands for a data library) is kept for
        # the worker's life: frozen, no full collection during a call scans it again (a call
        # on 1.3 MB of JSON took 36 ms, 24 ms frozen). Its garbage cycles, if any, stay.
        gc.freeze()

    def serve(self) -> None:
        self.channel.send({"type": "ready"})
        while True:
            message = self.channel.receive()
            if message is None:
                return
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "call":
                self.call(message)
            elif kind == "reset":
                self.reset()
            else:
                self.channel.send({"type": "error", "error_type": "ProtocolError",
                                   "message": f"unknown message {kind!r}", "traceback": ""})

    def call(self, request: dict[str, Any]) -> None:
        reply = self.run(request)
        if os.getpid() != self.channel.pid:
            os._exit(0)  # a child forked by the script returned into the harness
        for stream in self.streams:
            stream.end()
        fence = request.get("fence")
        write_fences(fence if isinstance(fence, str) and fence.isalnum() else "")
        if not self.self_reset:
            self.channel.send_bytes(reply)
            return
        try:  # before the next message is read: no call ever sees what an earlier one left
            self.clean()
        except Exception as exc:  # a sandbox that cannot be cleaned must not serve again
            self.channel.send_bytes(reply)
            os.write(2, f"harness: reset after the call failed: {exc!r}\n".encode())
            os._exit(70)
        # The reply and the ready in one write: the host checks the sandbox from outside now
        self.channel.send_bytes(reply + READY)

    def run(self, request: dict[str, Any]) -> bytes:
        if self.load_error is not None:
            return self.load_error
        assert self.entry is not None
        context = Context(self.channel, request)
        try:
            value = self.entry(context)
            if hasattr(value, "__await__"):
                value = finish(value, uses_asyncio(self.entry))
            return result_reply(value, context.state, self.threads.count())
        except BaseException as exc:
            if os.getpid() != self.channel.pid:
                os._exit(1)
            return error_line(exc, self.script)

    def reset(self) -> None:
        try:
            self.clean()
            self.channel.send({"type": "ready"})
        except Exception as exc:
            self.channel.send(error_reply(exc, self.script))

    def clean(self) -> None:
        """Kill the script's leftover processes and wipe /tmp."""
        if self.own_pidns:
            kill_others()
        self.tmp.wipe()


def kill_others() -> None:
    """SIGKILL every process of this pid namespace but us and init, and reap our children."""
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        return
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def wipe(path: str) -> None:
    """Delete everything below ``path`` (a script may have made dirs unreadable: fix first)."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            wipe(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def close_other_fds(keep: tuple[int, ...]) -> None:
    """Nothing the sandbox launcher left open reaches the script."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:  # noqa: SIM105 (contextlib is one import more in every worker)
                os.close(fd)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        os.write(2, b"usage: harness.py IN_FD OUT_FD SCRIPT ENTRYPOINT [--own-pidns] "
                    b"[--self-reset] [--path=DIR]...\n")
        return 2
    in_fd, out_fd = int(argv[1]), int(argv[2])
    add_paths([flag[len("--path="):] for flag in argv[5:] if flag.startswith("--path=")])
    close_other_fds((in_fd, out_fd))
    harness = Harness(Channel(in_fd, out_fd), argv[3], argv[4], "--own-pidns" in argv[5:],
                      "--self-reset" in argv[5:])
    harness.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
