"""The Python harness with values and exceptions a script should not be able to break it with:
an error reply that never raises, tracebacks without the harness's own frames, TypeError for
every value that is not JSON, and an inline state handle that follows the persistent store's
rules (service/state/session.py), so one script works both ways.

Unit tests on the imported harness where that is enough; real workers of the process
backend for what the caller sees.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import Recorder, actor_def, load_python_harness, request

from service.errors import ActorFailed, ResourceLimitExceeded
from service.sandbox.base import CallRequest, OutputEvent
from service.sandbox.pool import ActorPool
from service.sandbox.process import HARNESS_DIR, ProcessBackend
from service.state import base as state_base
from service.state import session as state_session
from service.state.context import StateContext
from service.state.embedded import EmbeddedStore
from service.state.session import StateBudget, StateSession

harness = load_python_harness("harness_values")
SCRIPT = "/actor/values.py"  # where a sandbox shows the script
HARNESS_FILE = str(HARNESS_DIR / "harness.py")
NAN_TEXT = "Out of range float values are not JSON compliant"


# --- helpers: the script's frames, a channel without a sandbox, the store behind it ------------


def script_code(source: str, filename: str = SCRIPT) -> dict[str, Any]:
    """Run ``source`` as if it were the script (its frames name ``filename``)."""
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


RAISER = script_code("""
    def fail(make):
        raise make()
""")["fail"]


def raised_by_script(make: Callable[[], BaseException]) -> BaseException:
    """The exception ``make()`` builds, raised from a frame of the script."""
    try:
        RAISER(make)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they are the point
        return exc
    raise AssertionError("not raised")


class Recording(harness.Channel):  # type: ignore[name-defined]
    """A channel that keeps what the harness writes (no fds)."""

    def __init__(self) -> None:
        super().__init__(-1, -1)
        self.lines: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        self.lines.append(data)


class StoreChannel(Recording):
    """Answers ``state`` messages as a server does: the real session over the embedded store,
    each message and reply through JSON."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: EmbeddedStore) -> None:
        super().__init__()
        self._loop = loop
        self._session = StateSession(store, StateContext("default", "values"),
                                     StateBudget(10_000, 10_000_000))
        self._replies: list[Any] = []

    def send_bytes(self, data: bytes) -> None:
        super().send_bytes(data)
        message = json.loads(data)
        if message.get("type") == "state":
            reply = self._loop.run_until_complete(self._session.handle(message))
            self._replies.append(json.loads(json.dumps(reply)))

    def receive(self) -> Any:
        return self._replies.pop(0)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for the session, in a plain (sync) test."""
    running = asyncio.new_event_loop()
    yield running
    running.close()


def stored_state(store: EmbeddedStore) -> dict[str, Any]:
    prefix = "default:values:"
    return {key[len(prefix):]: json.loads(entry.text) for key, entry in store._data.items()}


# --- 1. error_reply never raises ----------------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


class Interrupting(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt  # not an Exception: a bare `except Exception` misses it


class NameRaises(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("no name either")


class Nameless(Exception, metaclass=NameRaises):
    pass


class RuntimeUnprintable(RuntimeError):  # resource_of reads str() of a RuntimeError
    def __str__(self) -> str:
        raise ValueError("no str")


class ErrnoRaises(OSError):  # resource_of reads errno of an OSError
    @property
    def errno(self) -> int:  # type: ignore[override]
        raise RuntimeError("no errno")


class FalsyRaises(Exception):
    def __bool__(self) -> bool:
        raise RuntimeError("no truth")


class ClassRaises(Exception):  # isinstance() falls back on __class__
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("no class")


def caused_by_falsy_raiser() -> BaseException:
    exc = ValueError("outer")
    exc.__cause__ = FalsyRaises("cause")
    return exc


class Bare(BaseException):
    pass


Weird = type("Wéird name\n<&>\U0001f600", (Exception,), {})

HOSTILE = [  # (the exception, error_type, message)
    (lambda: Unprintable("hidden"), "Unprintable", "<exception str() failed>"),
    (lambda: Interrupting("hidden"), "Interrupting", "<exception str() failed>"),
    (lambda: Nameless("shown"), "Nameless", "shown"),
    (lambda: RuntimeUnprintable("hidden"), "RuntimeUnprintable", "<exception str() failed>"),
    (lambda: ErrnoRaises(28, "full"), "ErrnoRaises", "[Errno 28] full"),
    (caused_by_falsy_raiser, "ValueError", "outer"),
    (lambda: ClassRaises("shown"), "ClassRaises", "shown"),
    (lambda: Weird("odd"), "Wéird name\n<&>\U0001f600", "odd"),
    (lambda: Bare("bare"), "Bare", "bare"),
    (lambda: SystemExit(3), "SystemExit", "3"),
    (lambda: KeyboardInterrupt(), "KeyboardInterrupt", ""),
    (lambda: GeneratorExit("closing"), "GeneratorExit", "closing"),
]


@pytest.mark.parametrize(("make", "error_type", "message"), HOSTILE,
                         ids=[row[1].split()[0] + str(i) for i, row in enumerate(HOSTILE)])
def test_error_reply_never_raises(make: Callable[[], BaseException], error_type: str,
                                  message: str) -> None:
    exc = raised_by_script(make)
    try:
        reply = harness.error_reply(exc, SCRIPT)
    except BaseException as escaped:  # a KeyboardInterrupt would stop the whole session
        pytest.fail(f"error_reply raised {type(escaped).__name__}")
    assert {k: reply[k] for k in ("type", "error_type", "message")} == {
        "type": "error", "error_type": error_type, "message": message}
    assert "resource" not in reply
    assert json.loads(harness.encode(reply))["error_type"] == error_type
    if reply["traceback"]:  # formatted where traceback itself can (it may fail: not here)
        assert reply["traceback"].startswith("Traceback (most recent call last):\n")
        assert f'File "{SCRIPT}", line 3, in fail' in reply["traceback"]


def test_the_traceback_of_an_unprintable_exception_says_so() -> None:
    reply = harness.error_reply(raised_by_script(lambda: Unprintable("x")), SCRIPT)
    assert reply["traceback"].endswith(".Unprintable: <exception str() failed>\n")


def test_a_huge_message_goes_whole() -> None:
    """Not cut here: the host holds it to output_bytes (-32006 output, actor-api.md)."""
    text = "x" * 5_000_000
    reply = harness.error_reply(raised_by_script(lambda: ValueError(text)), SCRIPT)
    assert reply["message"] == text
    assert reply["traceback"].endswith(f"ValueError: {text}\n")


def test_a_reply_with_no_memory_left_for_it_still_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(message: Any) -> bytes:
        raise MemoryError

    exc = raised_by_script(lambda: ValueError("x" * 1000))
    monkeypatch.setattr(harness, "encode", no_memory)
    line = harness.error_line(exc, SCRIPT)
    assert json.loads(line) == {"type": "error", "error_type": "MemoryError",
                                "message": "no memory left to report the error",
                                "traceback": "", "resource": "memory"}


def test_the_resource_hint_is_still_given() -> None:
    reply = harness.error_reply(raised_by_script(lambda: OSError(28, "No space left")), SCRIPT)
    assert reply["resource"] == "disk"
    reply = harness.error_reply(raised_by_script(MemoryError), SCRIPT)
    assert reply["resource"] == "memory"


# --- 2. only the script's frames --------------------------------------------------------------


def frames(traceback: str) -> list[str]:
    """The ``File "...", line N, in F`` lines of a traceback, stripped."""
    return [line.strip() for line in traceback.splitlines() if line.startswith('  File "')]


def failure_of(entry: Callable[[Any], Any], context: Any) -> dict[str, Any]:
    try:
        entry(context)
    except Exception as exc:
        return harness.error_reply(exc, SCRIPT)
    raise AssertionError("not raised")


def inline_context(state: dict[str, Any] | None = None) -> Any:
    return harness.Context(Recording(), {"state": state or {}})


def test_a_send_output_traceback_shows_only_the_script() -> None:
    entry = script_code("""
        def process(context):
            context.send_output("out", {1, 2})
    """)["process"]
    reply = failure_of(entry, inline_context())
    assert frames(reply["traceback"]) == [f'File "{SCRIPT}", line 3, in process']
    assert reply["traceback"].endswith("TypeError: send_output: data is not JSON: Object of "
                                       "type set is not JSON serializable\n")
    assert HARNESS_FILE not in reply["traceback"]


def test_a_chained_exception_loses_the_harness_frames_too() -> None:
    entry = script_code("""
        def process(context):
            try:
                context.get_state().increment("n", 1.5)
            except TypeError as exc:
                raise ValueError("wrapped") from exc
    """)["process"]
    reply = failure_of(entry, inline_context())
    assert frames(reply["traceback"]) == [f'File "{SCRIPT}", line 4, in process',
                                          f'File "{SCRIPT}", line 6, in process']
    assert "TypeError: amount must be an integer\n" in reply["traceback"]
    assert HARNESS_FILE not in reply["traceback"]


def test_frames_of_what_the_script_calls_stay() -> None:
    """Its own helper module and the standard library are the author's business."""
    helper = script_code("""
        import json

        def parse(text):
            return json.loads(text)

        def send(context):
            context.send_output("out", float("nan"))
    """, "/actor/helper.py")
    entry = script_code("""
        def process(context):
            helper = context.get_config("helper")
            if context.get_input("mode") == "parse":
                helper["parse"]("{")
            helper["send"](context)
    """)["process"]
    context = harness.Context(Recording(), {"config": {"helper": helper},
                                            "payload": {"mode": "parse"}})
    shown = frames(failure_of(entry, context)["traceback"])
    assert shown[:2] == [f'File "{SCRIPT}", line 5, in process',
                         'File "/actor/helper.py", line 5, in parse']
    assert any("json/decoder.py" in frame for frame in shown[2:])
    context = harness.Context(Recording(), {"config": {"helper": helper}})
    reply = failure_of(entry, context)
    assert frames(reply["traceback"]) == [f'File "{SCRIPT}", line 6, in process',
                                          'File "/actor/helper.py", line 8, in send']
    assert reply["traceback"].endswith(f"TypeError: send_output: data is not JSON: {NAN_TEXT}\n")


# --- 3. TypeError for every value that is not JSON ------------------------------------------


def cycle() -> list[Any]:
    looped: list[Any] = []
    looped.append(looped)
    return looped


def deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


NOT_JSON = [  # (value, what the encoder says about it)
    (math.nan, NAN_TEXT),
    ({"x": [math.inf]}, NAN_TEXT),
    ({1, 2}, "Object of type set is not JSON serializable"),
    (cycle(), "Circular reference detected"),
    (deep(), "maximum recursion depth exceeded while encoding a JSON object"),
]
NOT_JSON_IDS = ["nan", "infinity", "set", "cycle", "deep"]


@pytest.mark.parametrize(("value", "said"), NOT_JSON, ids=NOT_JSON_IDS)
def test_send_output_of_a_value_that_is_not_json_is_a_type_error(value: Any, said: str) -> None:
    context = inline_context()
    with pytest.raises(TypeError) as caught:
        context.send_output("out", value)
    assert str(caught.value) == f"send_output: data is not JSON: {said}"
    assert caught.value.__suppress_context__
    assert context._channel.lines == []  # nothing was sent
    context.send_output("out", [1])  # the encoder is still usable
    assert context._channel.lines == [b'{"type":"output","port":"out","data":[1]}\n']


@pytest.mark.parametrize(("value", "said"), NOT_JSON, ids=NOT_JSON_IDS)
@pytest.mark.parametrize("persistent", [False, True], ids=["inline", "persistent"])
def test_state_values_that_are_not_json_are_type_errors(
        loop: asyncio.AbstractEventLoop, value: Any, said: str, persistent: bool) -> None:
    store = EmbeddedStore(0)
    channel = StoreChannel(loop, store) if persistent else Recording()
    context = harness.Context(channel, {"persistent": persistent, "state": {}})
    handle = context.get_state()
    for name, call_it in (("set", lambda: handle.set("k", value)),
                          ("push", lambda: handle.push("k", value)),
                          ("extend", lambda: handle.extend("k", [1, value]))):
        with pytest.raises(TypeError) as caught:
            call_it()
        noun = "values" if name == "extend" else "value"
        assert str(caught.value) == f"{name}: {noun} is not JSON: {said}"
    assert channel.lines == []  # nothing reached the store
    assert context.state == {} and store._data == {}


def test_persistent_set_state_of_a_value_that_is_not_json_is_a_type_error(
        loop: asyncio.AbstractEventLoop) -> None:
    context = harness.Context(StoreChannel(loop, EmbeddedStore(0)), {"persistent": True})
    with pytest.raises(TypeError) as caught:
        context.set_state("k", math.nan)
    assert str(caught.value) == f"set_state: value is not JSON: {NAN_TEXT}"


@pytest.mark.parametrize(("value", "said"), NOT_JSON, ids=NOT_JSON_IDS)
def test_the_return_value_that_is_not_json_is_a_type_error(value: Any, said: str) -> None:
    with pytest.raises(TypeError) as caught:
        harness.result_reply(value, {}, 1)
    assert str(caught.value) == f"process() return value is not JSON-serializable: {said}"


# --- 4. the inline handle follows the store's rules -----------------------------------------


def test_the_harness_copies_of_the_store_rules_are_the_stores() -> None:
    assert harness.NOT_AN_INTEGER == state_base.NOT_AN_INTEGER
    assert harness.WOULD_OVERFLOW == state_base.WOULD_OVERFLOW
    assert (harness.INT64_MIN, harness.INT64_MAX) == (state_base.INT64_MIN, state_base.INT64_MAX)
    assert harness.KEY_MAX_BYTES == state_session.KEY_MAX_BYTES


BIG = 2**63 - 1
# Each scenario: operations run in turn on a fresh handle, inline and persistent.
SCENARIOS: dict[str, list[tuple[Any, ...]]] = {
    "amount": [("increment", "a", 1.5), ("increment", "t", True), ("decrement", "t", False),
               ("increment", "a", "1"), ("increment", "a", 2**63), ("decrement", "a", -2**63),
               ("increment", "a", -2**63), ("decrement", "a", BIG), ("get", "a", "absent")],
    "overflow": [("set", "big", BIG), ("increment", "big"), ("decrement", "big", -1),
                 ("get", "big"), ("set", "low", -BIG - 1), ("decrement", "low"),
                 ("increment", "low", -1), ("increment", "low", BIG), ("get", "low")],
    "not_an_integer": [("set", "f", 1.0), ("increment", "f"), ("set", "b", True),
                       ("increment", "b"), ("set", "s", "5"), ("decrement", "s"),
                       ("set", "h", 2**64), ("increment", "h"), ("set", "n", None),
                       ("increment", "n"), ("set", "l", [1]), ("increment", "l"),
                       ("get", "f"), ("get", "h")],
    "keys": [("set", "", 1), ("set", 5, 1), ("get", None), ("increment", 2.5),
             ("set", "k\x00", 1), ("set", "k\x1f", 1), ("set", "k\x7f", 1), ("push", "k\x85", 1),
             ("set", "k\x9f", 1), ("set", "k\ud800", 1), ("delete", "\udfff"), ("pop", "k\n"),
             ("set", "k" * 1025, 1), ("set", "é" * 513, 1), ("set", "é" * 512, 1),
             ("set", "k" * 1024, 2), ("set", "a:b \u2028 ☃", 3), ("increment", "\xa0")],
    "lists": [("extend", "e", 5), ("get", "e", "absent"), ("extend", "e", "ab"),
              ("extend", "e", range(2)), ("push", "e", {"x": [1]}), ("pop", "e"),
              ("pop", "missing"), ("get", "missing", "absent"), ("set", "s", "text"),
              ("push", "s", 1), ("extend", "s", [1]), ("pop", "s"), ("get", "s"),
              ("set", "t", (1, 2)), ("push", "t", 3), ("pop", "t"), ("get", "t"),
              ("set", "empty", []), ("pop", "empty"), ("get", "empty")],
    "values": [("push", "p", math.nan), ("extend", "p", [1, {2}]), ("set", "p", cycle()),
               ("get", "p", "absent"), ("set", "ok", {"a": ["é", None]}), ("get", "ok"),
               ("delete", "ok"), ("delete", "ok"), ("get", "ok", "gone")],
}


def outcomes(handle: Any, operations: list[tuple[Any, ...]]) -> list[Any]:
    """What each operation returned, or the type and text of what it raised."""
    seen: list[Any] = []
    for op, *args in operations:
        try:
            seen.append(["ok", getattr(handle, op)(*args).value])
        except Exception as exc:
            seen.append([type(exc).__name__, str(exc)])
    return seen


@pytest.mark.parametrize("name", SCENARIOS)
def test_inline_and_persistent_handles_agree(loop: asyncio.AbstractEventLoop,
                                             name: str) -> None:
    store = EmbeddedStore(0)
    persistent = harness.Context(StoreChannel(loop, store), {"persistent": True})
    expected = outcomes(persistent.get_state(), SCENARIOS[name])
    inline = inline_context()
    assert outcomes(inline.get_state(), SCENARIOS[name]) == expected
    assert json.loads(harness.encode(inline.state)) == stored_state(store)


def test_the_inline_rules_say_what_the_store_says() -> None:
    """The texts themselves (the test above only compares them with the store's)."""
    handle = inline_context({"big": BIG, "f": 1.0, "s": "x"}).get_state()
    assert outcomes(handle, [("increment", "a", 1.5), ("increment", "big"),
                             ("increment", "f"), ("increment", "a", 2**63), ("set", "", 1),
                             ("set", "k\x00", 1), ("set", "k\ud800", 1), ("set", "k" * 1025, 1),
                             ("push", "s", 1), ("extend", "e", 5)]) == [
        ["TypeError", "amount must be an integer"],
        ["OverflowError", "increment or decrement would overflow"],
        ["TypeError", "value is not an integer or out of range"],
        ["OverflowError", "amount is out of the 64-bit range"],
        ["TypeError", "a state key must be a non-empty string"],
        ["ValueError", "a state key must not contain control characters"],
        ["ValueError", "a state key must not contain lone surrogates (text that has no UTF-8 "
                       "form)"],
        ["ValueError", "a state key is at most 1024 bytes"],
        ["TypeError", "the value under this key is not a list"],
        ["TypeError", "'int' object is not iterable"],
    ]


def test_a_failed_operation_changes_nothing() -> None:
    state = {"big": BIG, "s": "x"}
    handle = inline_context(state).get_state()
    outcomes(handle, [("extend", "e", 5), ("increment", "big"), ("increment", "n", 1.5),
                      ("push", "p", math.nan), ("push", "s", 1), ("pop", "missing"),
                      ("extend", "l", [1, {2}])])
    assert state == {"big": BIG, "s": "x"}


def test_set_state_takes_the_key_rule_on_inline_state() -> None:
    context = inline_context({"k": 1})
    with pytest.raises(TypeError) as wrong_type:
        context.set_state(7, 1)
    assert str(wrong_type.value) == "a state key must be a non-empty string"
    with pytest.raises(ValueError) as control:
        context.set_state("a\nb", 1)
    assert str(control.value) == "a state key must not contain control characters"
    with pytest.raises(TypeError) as not_json:
        context.set_state("k", float("nan"))
    assert str(not_json.value).startswith("set_state: value is not JSON")
    context.set_state("k", 2)
    assert context.state == {"k": 2}
    assert context.get_state("a\nb", "default") == "default"


# --- through real workers of the process backend --------------------------------------------

Boot = Callable[[str, str], Awaitable[ActorPool]]


@pytest.fixture
async def boot(process_backend: ProcessBackend, scratch_dir: Path) -> AsyncIterator[Boot]:
    """``await boot(name, source)``: the pool of that script's actor (a failed call kills
    its worker by design: the pool boots the next one); closed at the end."""
    pools: list[ActorPool] = []

    async def start(name: str, source: str) -> ActorPool:
        path = scratch_dir / name
        path.write_text(textwrap.dedent(source))
        path.chmod(0o644)
        pools.append(ActorPool(actor_def(path), process_backend))
        return pools[-1]

    yield start
    for pool in pools:
        await pool.aclose()


async def run(pool: ActorPool, payload: dict[str, Any] | None = None,
              **kwargs: Any) -> tuple[Any, Recorder]:
    """One call through the pool: (its outcome, what it sent)."""
    recorder = Recorder()
    return await pool.run(request(payload, actor_id=pool.actor.id, **kwargs), recorder), recorder


RAISING = """
    {header}

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")


    class Unrepresentable(Exception):
        def __repr__(self):
            raise RuntimeError("no repr for you")


    class NameRaises(type):
        @property
        def __name__(cls):
            raise RuntimeError("no name either")


    class Nameless(Exception, metaclass=NameRaises):
        pass


    class Bare(BaseException):
        pass


    RAISE = {{
        "unprintable": lambda: Unprintable("hidden"),
        "unrepresentable": lambda: Unrepresentable("shown"),
        "nameless": lambda: Nameless("shown"),
        "weird": lambda: type("Wéird name\\n<&>", (Exception,), {{}})("odd"),
        "base": lambda: Bare("bare"),
        "exit": lambda: SystemExit(3),
        "interrupt": lambda: KeyboardInterrupt(),
    }}


    {define} process(context):
        mode = context.get_input("mode")
        if mode in RAISE:
            raise RAISE[mode]()
        return "served"
"""
RAISED = [("unprintable", "Unprintable", "<exception str() failed>"),
          ("unrepresentable", "Unrepresentable", "shown"),
          ("nameless", "Nameless", "shown"), ("weird", "Wéird name\n<&>", "odd"),
          ("base", "Bare", "bare"), ("exit", "SystemExit", "3"),
          ("interrupt", "KeyboardInterrupt", "")]


@pytest.mark.parametrize("kind", ["def", "async_def"])
async def test_hostile_exceptions_fail_the_call_and_the_actor_serves_on(boot: Boot,
                                                                         kind: str) -> None:
    source = RAISING.format(header="import asyncio" if kind == "async_def" else "",
                            define="async def" if kind == "async_def" else "def")
    pool = await boot(f"raising_{kind}.py", source)

    def line_of(text: str) -> int:
        return next(number for number, line in enumerate(textwrap.dedent(source).splitlines(),
                                                         1) if text in line)

    for mode, error_type, message in RAISED:
        if (kind, mode) == ("async_def", "unrepresentable"):
            continue  # asyncio's own repr of the task raises it: the next test
        recorder = Recorder()
        with pytest.raises(ActorFailed) as caught:
            await pool.run(request({"mode": mode}, actor_id=pool.actor.id), recorder)
        data = caught.value.data
        assert (caught.value.CODE, data["type"], data["message"]) == (-32004, error_type,
                                                                      message), mode
        assert frames(data["traceback"]) == [
            f'File "/actor/raising_{kind}.py", line {line_of("raise RAISE")}, in process'], mode
        assert data["traceback"].endswith(f"{message}\n")
        assert recorder.events == []  # no log of a harness's own traceback
        outcome, _ = await run(pool, {"mode": "ok"})
        assert outcome.return_value == "served"


async def test_a_repr_that_raises_inside_asyncio_fails_the_call_with_its_error(
        boot: Boot) -> None:
    """asyncio.run (3.11) formats its main task, and so the exception's repr, while the
    exception propagates (signal.getsignal of its own SIGINT handler): the script's
    RuntimeError then fails the call, the exception it raised as its context."""
    pool = await boot("raising_async.py", RAISING.format(header="import asyncio",
                                                         define="async def"))
    with pytest.raises(ActorFailed) as caught:
        await run(pool, {"mode": "unrepresentable"})
    data = caught.value.data
    assert (data["type"], data["message"]) == ("RuntimeError", "no repr for you")
    assert "__actor__.Unrepresentable: shown\n" in data["traceback"]
    assert "/harness/" not in data["traceback"]
    outcome, _ = await run(pool, {"mode": "ok"})
    assert outcome.return_value == "served"


async def test_what_the_scripts_load_made_is_out_of_the_collectors_reach(boot: Boot) -> None:
    """The worker freezes its heap once the script is loaded: its modules (and what they
    made) are not scanned by the full collections a call's allocations set off."""
    pool = await boot("frozen.py", """
        import gc
        import decimal
        import email.message
        TABLE = [{"row": i} for i in range(5000)]

        def process(context):
            return {"frozen": gc.get_freeze_count(), "scanned": len(gc.get_objects())}
    """)
    outcome, _ = await run(pool, {"input": 1})
    assert outcome.return_value["frozen"] > 5000
    assert outcome.return_value["scanned"] < 2000


async def test_an_exception_with_a_huge_message_is_held_to_output_bytes(boot: Boot) -> None:
    pool = await boot("huge_message.py", """
        def process(context):
            if "size" in context.payload:
                raise ValueError("x" * context.get_input("size"))
            return "served"
    """)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await run(pool, {"size": 5_000_000})
    assert caught.value.data == {"resource": "output", "limit": 65_536}
    outcome, _ = await run(pool)
    assert outcome.return_value == "served"
    # 15 MB in 64 MB: the reply (message, traceback, their JSON) may not fit in memory
    with pytest.raises(ResourceLimitExceeded) as caught:
        await run(pool, {"size": 15_000_000})
    assert caught.value.data in ({"resource": "memory", "limit": 64},
                                 {"resource": "output", "limit": 65_536})
    outcome, _ = await run(pool)
    assert outcome.return_value == "served"


async def test_send_output_of_nan_is_a_type_error_the_script_catches(boot: Boot) -> None:
    pool = await boot("send_nan.py", """
        async def process(context):
            try:
                await context.send_output("out", {"v": float("nan")})
            except TypeError as exc:
                caught = [type(exc).__name__, str(exc)]
            await context.send_output("out", "after")
            return caught
    """)
    outcome, recorder = await run(pool)
    assert outcome.return_value == ["TypeError", f"send_output: data is not JSON: {NAN_TEXT}"]
    assert recorder.events == [OutputEvent("out", "after")]


async def test_a_send_output_traceback_from_a_worker_shows_no_harness_frame(boot: Boot) -> None:
    pool = await boot("send_set.py", """
        def process(context):
            context.send_output("out", {1, 2})
    """)
    with pytest.raises(ActorFailed) as caught:
        await run(pool)
    traceback = caught.value.data["traceback"]
    assert frames(traceback) == ['File "/actor/send_set.py", line 3, in process']
    assert traceback.endswith("TypeError: send_output: data is not JSON: Object of type set "
                              "is not JSON serializable\n")
    assert "/harness/" not in traceback


BOTH_WAYS = """
    async def process(context):
        state = context.get_state()
        await state.set("big", 9223372036854775807)
        tried = []
        for op, args in [("increment", ("a", 1.5)), ("increment", ("t", True)),
                         ("increment", ("big", 1)), ("extend", ("e", 5)),
                         ("push", ("p", float("nan"))), ("set", ("", 1))]:
            try:
                tried.append(["ok", await getattr(state, op)(*args)])
            except Exception as exc:
                tried.append([type(exc).__name__, str(exc)])
        return [tried, await state.get("a", "absent"), await state.get("e", "absent"),
                await state.get("big")]
"""


async def test_a_script_gets_the_same_outcome_inline_and_persistent(boot: Boot) -> None:
    pool = await boot("both_ways.py", BOTH_WAYS)
    session = StateSession(EmbeddedStore(0), StateContext("default", pool.actor.id),
                           StateBudget(100, 100_000))
    persistent = await pool.run(CallRequest(pool.actor.id, {}, {}, {}, 1, state_ops=session),
                                Recorder())
    inline, _ = await run(pool)
    expected = [[["TypeError", "amount must be an integer"],
                 ["TypeError", "amount must be an integer"],
                 ["OverflowError", "increment or decrement would overflow"],
                 ["TypeError", "'int' object is not iterable"],
                 ["TypeError", f"push: value is not JSON: {NAN_TEXT}"],
                 ["TypeError", "a state key must be a non-empty string"]],
                "absent", "absent", 9223372036854775807]
    assert persistent.return_value == expected
    assert inline.return_value == expected
    assert inline.state == {"big": 9223372036854775807}
