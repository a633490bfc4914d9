"""The JavaScript harness refuses values that are not JSON instead of changing them, and its
inline state handle keeps the persistent store's rules (service/state/session.py), so one
script works both ways. Real node workers on the process backend; each call runs the body
of an async function of ``(context, state)`` that the test sends as the payload's ``code``.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import Recorder, actor_def

from service.errors import ActorFailed
from service.manifest.model import ActorDef
from service.sandbox.base import CallOutcome, CallRequest, Worker
from service.sandbox.process import ProcessBackend
from service.state.base import NOT_AN_INTEGER, WOULD_OVERFLOW
from service.state.context import StateContext
from service.state.embedded import EmbeddedStore
from service.state.session import StateBudget, StateSession

RUNNER = """
    // Runs the body the test sends: `state` is context.getState(), the handle.
    const AsyncFunction = (async () => {}).constructor;

    async function process(context) {
      const body = new AsyncFunction("context", "state", context.getInput("code"));
      return body(context, context.getState());
    }
"""
# What an operation gave: its value (undefined: null), or the [name, message] it threw.
OUTCOME = """
    const outcome = async (run) => {
      try {
        const value = await run();
        return value === undefined ? null : value;
      } catch (err) {
        return [err.name, err.message];
      }
    };
"""
DATE_0 = "1970-01-01T00:00:00.000Z"
PREFIX = "default:runner:"  # the runner's keys in the store: {namespace}:{actor_id}:


class Runner:
    """One node worker running RUNNER; calls with inline or persistent state."""

    def __init__(self, worker: Worker, actor: ActorDef) -> None:
        self.worker = worker
        self.actor = actor

    async def inline(self, code: str, state: dict[str, Any] | None = None
                     ) -> tuple[CallOutcome, Recorder]:
        recorder = Recorder()
        request = CallRequest(self.actor.id, {"code": _js(code)}, {}, state or {}, 1234567890)
        return await self.worker.call(request, recorder), recorder

    async def persistent(self, code: str, session: StateSession) -> CallOutcome:
        request = CallRequest(self.actor.id, {"code": _js(code)}, {}, {}, 1234567890,
                              state_ops=session)
        return await self.worker.call(request, Recorder())


def _js(code: str) -> str:
    return OUTCOME + textwrap.dedent(code)


def _session(store: EmbeddedStore) -> StateSession:
    return StateSession(store, StateContext("default", "runner"), StateBudget(100, 100_000))


async def _stored(store: EmbeddedStore) -> dict[str, str | None]:
    """Every key of the runner in the store, without its prefix, and its JSON text."""
    return {key[len(PREFIX):]: await store.get(key) for key in store._data}


@pytest.fixture
async def runner(process_backend: ProcessBackend, scratch_dir: Path) -> AsyncIterator[Runner]:
    path = scratch_dir / "runner.js"
    path.write_text(textwrap.dedent(RUNNER))
    path.chmod(0o644)
    actor = actor_def(path)
    worker = await process_backend.start_worker(actor)
    yield Runner(worker, actor)
    await worker.close()


async def _fails(call: Awaitable[Any]) -> dict[str, Any]:
    """The -32004 error's data of a call that must fail."""
    with pytest.raises(ActorFailed) as caught:
        await call
    assert caught.value.CODE == -32004
    data: dict[str, Any] = caught.value.data
    return data


# --- values that are not JSON --------------------------------------------------------------

# A JavaScript expression, and what the refusal says about it (the path is a JSON pointer).
NOT_JSON = [
    ("{a: [NaN]}", "NaN at /a/0"),
    ("{a: {b: Infinity}}", "Infinity at /a/b"),
    ("[1, -Infinity]", "-Infinity at /1"),
    ("NaN", "NaN"),
    ("[1, undefined]", "undefined at /1"),
    ("[function () {}]", "a function at /0"),
    ("{f: function () {}}", "a function at /f"),
    ("{s: Symbol('x')}", "a symbol at /s"),
    ("[Symbol('x')]", "a symbol at /0"),
    ("{m: new Map([[1, 2]])}", "a Map at /m"),
    ("{s: new Set([1])}", "a Set at /s"),
    ("[new WeakMap()]", "a WeakMap at /0"),
    ("{w: new WeakSet()}", "a WeakSet at /w"),
    ("{n: [1, 2n]}", "a BigInt at /n/1"),
    ("{'a/b': {'~': NaN}}", "NaN at /a~1b/~0"),
    ("{ok: [1, {}], x: {toJSON() { return {y: [0, NaN]}; }}}", "NaN at /x/y/1"),
    # JSON.stringify unboxes a boxed number after the replacer saw the object
    ("{n: new Number(NaN)}", "NaN at /n"),
    ("[1, Object(Infinity)]", "Infinity at /1"),
    ("new Number(-Infinity)", "-Infinity"),
    # built-in objects it writes as {} whatever they hold
    ("{w: new WeakRef({})}", "a WeakRef at /w"),
    ("{p: Promise.resolve(1)}", "a Promise at /p"),
    ("{r: /x/g}", "a RegExp at /r"),
    ("{e: new Error('x')}", "an Error at /e"),
    ("[Object.assign(new RangeError('x'), {code: 'E'})]", "an Error at /0"),
    ("{b: new ArrayBuffer(8)}", "an ArrayBuffer at /b"),
    ("{b: new SharedArrayBuffer(8)}", "a SharedArrayBuffer at /b"),
    ("{v: new DataView(new ArrayBuffer(8))}", "a DataView at /v"),
]
NOT_JSON_IDS = [expression for expression, _ in NOT_JSON]


@pytest.mark.parametrize(("expression", "problem"), NOT_JSON, ids=NOT_JSON_IDS)
async def test_send_output_refuses_a_value_that_is_not_json(
        runner: Runner, expression: str, problem: str) -> None:
    """The TypeError is thrown in the script, which may catch it; nothing is sent."""
    outcome, recorder = await runner.inline(f"""
        return outcome(() => {{ context.sendOutput("output", {expression}); }});
    """)
    assert outcome.return_value == ["TypeError", f"sendOutput: data is not JSON: {problem}"]
    assert recorder.events == []


@pytest.mark.parametrize(("expression", "problem"), NOT_JSON, ids=NOT_JSON_IDS)
async def test_a_return_value_that_is_not_json_fails_the_call(
        runner: Runner, expression: str, problem: str) -> None:
    data = await _fails(runner.inline(f"return {expression};"))
    assert (data["type"], data["message"]) == (
        "TypeError", f"process() return value is not JSON-serializable: {problem}")


@pytest.mark.parametrize(("code", "message"), [
    ("return () => 42;", "process() return value is not JSON-serializable: a function"),
    ("context.state.k = {a: [1, NaN]}; return 1;",
     "process() state is not JSON-serializable: NaN at /k/a/1"),
    ("context.state.k = new Set([1]); return 1;",
     "process() state is not JSON-serializable: a Set at /k"),
])
async def test_a_return_value_or_state_that_is_not_json_fails_the_call(
        runner: Runner, code: str, message: str) -> None:
    data = await _fails(runner.inline(code))
    assert (data["type"], data["message"]) == ("TypeError", message)


async def test_a_cycle_stays_a_type_error(runner: Runner) -> None:
    data = await _fails(runner.inline("const o = {}; o.self = o; return o;"))
    assert data["type"] == "TypeError"
    assert data["message"].startswith(
        "process() return value is not JSON-serializable: Converting circular structure to JSON")


async def test_what_json_stringify_does_that_scripts_rely_on_is_kept(runner: Runner) -> None:
    """An undefined property is dropped, a Date (toJSON) is its string, a top-level
    undefined is null: sendOutput(port) with no data, and a function returning nothing.
    A class instance is its own enumerable properties, a Buffer its toJSON, an invalid Date
    null (its toJSON's own answer), a boxed finite number, string or boolean its value, a
    typed array an object of its indices (lossy, but its data)."""
    outcome, recorder = await runner.inline("""
        await context.sendOutput("a", {gone: undefined, when: new Date(0), n: [1, 2.5]});
        await context.sendOutput("b");
        class Point { constructor() { this.x = 1; this.y = 2; } norm() { return 3; } }
        await context.sendOutput("c", {
          point: new Point(), buffer: Buffer.from("hi"), invalid: new Date(NaN),
          boxed: [new Number(2.5), Object(-1), new String("s"), new Boolean(false)],
          typed: new Uint16Array([7, 8]),
        });
        return {gone: undefined, when: new Date(0)};
    """)
    kept: list[tuple[str, Any]] = [
        ("a", {"when": DATE_0, "n": [1, 2.5]}),
        ("b", None),
        ("c", {"point": {"x": 1, "y": 2}, "buffer": {"type": "Buffer", "data": [104, 105]},
               "invalid": None, "boxed": [2.5, -1, "s", False], "typed": {"0": 7, "1": 8}}),
    ]
    assert recorder.outputs == kept
    assert outcome.return_value == {"when": DATE_0}
    nothing, _ = await runner.inline("context.setState('k', {u: undefined, d: new Date(0)});")
    assert (nothing.return_value, nothing.state) == (None, {"k": {"d": DATE_0}})


# A state operation whose value is not JSON, and what it throws (both kinds of state).
STATE_NOT_JSON = [
    ("state.set('k', {a: [NaN]})", "set: value is not JSON: NaN at /a/0"),
    ("state.push('k', [undefined])", "push: value is not JSON: undefined at /0"),
    ("state.extend('k', [1, () => 1])", "extend: values is not JSON: a function at /1"),
    ("state.set('k', new Map([[1, 2]]))", "set: value is not JSON: a Map"),
]


@pytest.mark.parametrize(("operation", "message"), STATE_NOT_JSON)
async def test_a_state_value_that_is_not_json_throws_in_the_script(
        runner: Runner, operation: str, message: str) -> None:
    """Inline: the state is unchanged. Persistent: nothing reaches the host."""
    code = f"return outcome(() => {operation});"
    outcome, _ = await runner.inline(code, {"keep": 1})
    assert (outcome.return_value, outcome.state) == (["TypeError", message], {"keep": 1})
    store = EmbeddedStore(0)
    session = _session(store)
    persistent = await runner.persistent(code, session)
    assert persistent.return_value == ["TypeError", message]
    assert (session.budget.ops, await _stored(store)) == (0, {})


# --- the inline handle keeps the store's rules ---------------------------------------------


@pytest.mark.parametrize(("key", "message"), [
    ("''", "a state key must be a non-empty string"),
    ("5", "a state key must be a non-empty string"),
    ("null", "a state key must be a non-empty string"),
    ("'k'.repeat(1025)", "a state key is at most 1024 bytes"),
    ("'\u00e9'.repeat(513)", "a state key is at most 1024 bytes"),  # 513 characters, 1026 bytes
    ("'a\\nb'", "a state key must not contain control characters"),
    ("'a\\x7f'", "a state key must not contain control characters"),
    ("'a\\u0085'", "a state key must not contain control characters"),
    ("'a\\ud800'", "a state key must not contain lone surrogates (text that has no UTF-8 form)"),
])
async def test_inline_keys_follow_the_store_rules(runner: Runner, key: str,
                                                  message: str) -> None:
    outcome, _ = await runner.inline(f"""
        const key = {key};
        return [await outcome(() => state.set(key, 1)), await outcome(() => state.get(key)),
                await outcome(() => state.increment(key)), await outcome(() => state.push(key, 1)),
                await outcome(() => state.pop(key)), await outcome(() => state.delete(key))];
    """)
    assert outcome.return_value == [["TypeError", message]] * 6
    assert outcome.state == {}


async def test_inline_keys_the_store_takes(runner: Runner) -> None:
    """A key of 1024 bytes, a surrogate pair, a ':' are fine."""
    outcome, _ = await runner.inline("""
        await state.set('k'.repeat(1024), 1);
        await state.set('\\ud83d\\ude00', 2);
        return state.increment('a:b');
    """)
    assert outcome.return_value == 1
    assert outcome.state == {"k" * 1024: 1, "\U0001f600": 2, "a:b": 1}


@pytest.mark.parametrize(("call", "error"), [
    ("state.increment('n', 'x')", ["TypeError", "amount must be an integer"]),
    ("state.increment('n', 1.5)", ["TypeError", "amount must be an integer"]),
    ("state.increment('n', null)", ["TypeError", "amount must be an integer"]),
    ("state.increment('n', true)", ["TypeError", "amount must be an integer"]),
    ("state.decrement('n', '1')", ["TypeError", "amount must be an integer"]),
    ("state.increment('n', () => 1)", ["TypeError", "amount must be an integer"]),
    ("state.increment('n', 2 ** 63)", ["RangeError", "amount is out of the 64-bit range"]),
    ("state.decrement('n', -(2 ** 63))", ["RangeError", "amount is out of the 64-bit range"]),
])
async def test_inline_increment_amount_must_be_a_64_bit_integer(
        runner: Runner, call: str, error: list[str]) -> None:
    outcome, _ = await runner.inline(f"return outcome(() => {call});", {"n": 5})
    assert (outcome.return_value, outcome.state) == (error, {"n": 5})


# Numbers beyond 2 ** 53 here are ones node writes back with all their digits (10 ** 19,
# not 2 ** 63, which JSON.stringify writes as 9223372036854776000).
@pytest.mark.parametrize("current", ["abc", "5", 1.5, True, None, [1], 10**19, -(10**19)])
async def test_inline_increment_needs_a_64_bit_integer_value(runner: Runner,
                                                            current: Any) -> None:
    outcome, _ = await runner.inline("return outcome(() => state.increment('n'));",
                                     {"n": current})
    assert (outcome.return_value, outcome.state) == (["TypeError", NOT_AN_INTEGER],
                                                     {"n": current})


@pytest.mark.parametrize(("start", "call"), [
    (9 * 10**18, "state.increment('n', 3e17)"),
    (-9 * 10**18, "state.decrement('n', 3e17)"),
    (4 * 10**18, "state.increment('n', 6e18)"),
])
async def test_inline_increment_refuses_a_total_beyond_64_bits(runner: Runner, start: int,
                                                              call: str) -> None:
    outcome, _ = await runner.inline(f"return outcome(() => {call});", {"n": start})
    assert (outcome.return_value, outcome.state) == (["RangeError", WOULD_OVERFLOW],
                                                     {"n": start})


@pytest.mark.parametrize(("start", "call", "total"), [
    (2**53, "state.increment('n', 2)", 2**53 + 2),
    # 2 ** 63 - 1: in range, though the sum of the two numbers rounds to 2 ** 63; the total
    # kept is the nearest number, 2 ** 63, which JSON.stringify writes as below
    (2**63 - 1024, "state.increment('n', 1023)", 9223372036854776000),
    (-(2**63) + 1024, "state.decrement('n', 1024)", -9223372036854776000),
])
async def test_inline_increment_checks_the_exact_total(runner: Runner, start: int, call: str,
                                                       total: int) -> None:
    """Beyond 2 ** 53 numbers are not exact: the range is checked on the exact sum."""
    outcome, _ = await runner.inline(f"return {call};", {"n": start})
    assert (outcome.return_value, outcome.state) == (total, {"n": total})


@pytest.mark.parametrize("values", ["5", "'ab'", "null", "undefined", "{a: 1}"])
async def test_inline_extend_takes_a_list(runner: Runner, values: str) -> None:
    outcome, _ = await runner.inline(f"return outcome(() => state.extend('e', {values}));")
    assert (outcome.return_value, outcome.state) == (
        ["TypeError", "extend takes a list of values"], {})


async def test_inline_extend_takes_an_iterable_as_the_store_handle_does(runner: Runner) -> None:
    outcome, _ = await runner.inline("return state.extend('e', new Set([1, 2]));")
    assert (outcome.return_value, outcome.state) == (2, {"e": [1, 2]})


async def test_a_failed_inline_operation_changes_nothing(runner: Runner) -> None:
    before = {"t": "abc", "l": [1], "n": 1}
    outcome, _ = await runner.inline("""
        return [
          await outcome(() => state.extend('e', 5)),
          await outcome(() => state.extend('t', [1])),
          await outcome(() => state.push('t', 1)),
          await outcome(() => state.pop('t')),
          await outcome(() => state.increment('b', 'x')),
          await outcome(() => state.increment('d', null)),
          await outcome(() => state.increment('a', 1.5)),
          await outcome(() => state.increment('l')),
          await outcome(() => state.extend('l', [2, NaN])),
          await outcome(() => state.set('n', Symbol('s'))),
        ];
    """, before)
    assert outcome.return_value == [
        ["TypeError", "extend takes a list of values"],
        ["TypeError", "the value under this key is not a list"],
        ["TypeError", "the value under this key is not a list"],
        ["TypeError", "the value under this key is not a list"],
        ["TypeError", "amount must be an integer"],
        ["TypeError", "amount must be an integer"],
        ["TypeError", "amount must be an integer"],
        ["TypeError", NOT_AN_INTEGER],
        ["TypeError", "extend: values is not JSON: NaN at /1"],
        ["TypeError", "set: value is not JSON: a symbol"],
    ]
    assert outcome.state == before


async def test_inline_pop_of_a_missing_key_writes_nothing(runner: Runner) -> None:
    outcome, _ = await runner.inline("return [await state.pop('q'), await state.delete('q')];")
    assert (outcome.return_value, outcome.state) == ([None, False], {})


async def test_inline_values_are_kept_as_their_json(runner: Runner) -> None:
    """As in the store: a copy, as its JSON reads back (a later change of the object the
    script passed does not reach the state)."""
    outcome, _ = await runner.inline("""
        const doc = {when: new Date(0), gone: undefined};
        await state.set('doc', doc);
        doc.later = 1;
        await state.push('log', doc);
        return state.get('doc');
    """)
    assert outcome.return_value == {"when": DATE_0}
    assert outcome.state == {"doc": {"when": DATE_0}, "log": [{"when": DATE_0, "later": 1}]}


# Representative operations, run once with inline and once with persistent state.
BOTH_WAYS = """
    return [
      await outcome(() => state.increment('b', 'x')),
      await outcome(() => state.increment('n', 2)),
      await outcome(() => state.set('t', 'abc')),
      await outcome(() => state.increment('t')),
      await outcome(() => state.extend('e', 5)),
      await outcome(() => state.set('', 1)),
      await outcome(() => state.set('a\\nb', 1)),
      await outcome(() => state.set('k', {a: [NaN]})),
      await outcome(() => state.push('l', {when: new Date(0), gone: undefined})),
      await outcome(() => state.get('l')),
      await outcome(() => state.pop('missing')),
      await outcome(() => state.increment('n', 2 ** 63)),
      await outcome(() => state.decrement('low', 3e17)),
      await outcome(() => state.get('low')),
    ];
"""
BOTH_WAYS_RETURN = [
    ["TypeError", "amount must be an integer"],
    2,
    None,
    ["TypeError", NOT_AN_INTEGER],
    ["TypeError", "extend takes a list of values"],
    ["TypeError", "a state key must be a non-empty string"],
    ["TypeError", "a state key must not contain control characters"],
    ["TypeError", "set: value is not JSON: NaN at /a/0"],
    1,
    [{"when": DATE_0}],
    None,
    ["RangeError", "amount is out of the 64-bit range"],
    ["RangeError", WOULD_OVERFLOW],
    -9 * 10**18,
]


async def test_one_script_gets_the_same_outcome_inline_and_persistent(runner: Runner) -> None:
    inline, _ = await runner.inline(BOTH_WAYS, {"low": -9 * 10**18})
    assert inline.return_value == BOTH_WAYS_RETURN
    assert inline.state == {"low": -9 * 10**18, "n": 2, "t": "abc", "l": [{"when": DATE_0}]}
    store = EmbeddedStore(0)
    await store.set(PREFIX + "low", str(-9 * 10**18))
    persistent = await runner.persistent(BOTH_WAYS, _session(store))
    assert persistent.return_value == BOTH_WAYS_RETURN
    assert await _stored(store) == {"low": str(-9 * 10**18), "n": "2", "t": '"abc"',
                                    "l": f'[{{"when":"{DATE_0}"}}]'}


# --- "__proto__" is a key like any other ---------------------------------------------------


async def test_set_state_proto_stores_an_own_key(runner: Runner) -> None:
    outcome, _ = await runner.inline("""
        context.setState('__proto__', {a: 1});
        return [context.getState('__proto__'), Object.keys(context.state),
                Object.getPrototypeOf(context.state) === Object.prototype];
    """)
    assert outcome.return_value == [{"a": 1}, ["__proto__"], True]
    assert outcome.state == {"__proto__": {"a": 1}}


async def test_inline_set_state_refuses_at_once(runner: Runner) -> None:
    """As on persistent state: a bad key or a value that is not JSON throws in the script."""
    outcome, _ = await runner.inline("""
        const refused = [];
        for (const [key, value] of [['', 1], ['a\\nb', 1], ['k', NaN], ['k', new Map()]]) {
          try { context.setState(key, value); } catch (err) { refused.push(err.message); }
        }
        context.setState('k', 2);
        return refused;
    """)
    assert outcome.return_value == [
        "a state key must be a non-empty string",
        "a state key must not contain control characters",
        "setState: value is not JSON: NaN", "setState: value is not JSON: a Map"]
    assert outcome.state == {"k": 2}


@pytest.mark.parametrize(("code", "value"), [
    ("await state.set('__proto__', [1]); return state.push('__proto__', 2);", [1, 2]),
    ("return state.extend('__proto__', [1, 2]);", [1, 2]),
    ("return state.increment('__proto__', 7);", 7),
])
async def test_the_inline_handle_writes_proto_as_an_own_key(runner: Runner, code: str,
                                                           value: Any) -> None:
    outcome, _ = await runner.inline(f"""
        const written = await (async () => {{ {code} }})();
        return [written, await state.get('__proto__'),
                Object.getPrototypeOf(context.state) === Object.prototype];
    """)
    written = value if isinstance(value, int) else len(value)
    assert outcome.return_value == [written, value, True]
    assert outcome.state == {"__proto__": value}


async def test_reads_see_own_keys_only(runner: Runner) -> None:
    """Inherited names are not inputs, config or state."""
    outcome, _ = await runner.inline("""
        return [context.getInput('toString', 'none'), context.hasInput('__proto__'),
                context.getConfig('constructor', 'none'),
                context.getState('hasOwnProperty', 'none'),
                await state.get('valueOf', 'none'), await state.delete('toString'),
                await outcome(() => state.increment('constructor'))];
    """)
    assert outcome.return_value == ["none", False, "none", "none", "none", False, 1]
    assert outcome.state == {"constructor": 1}
