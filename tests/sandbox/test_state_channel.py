"""Persistent state over the harness channel, on every backend (service/sandbox/base.py).

The store behind is the real embedded one, through the real session: what the script does
must land under ``{namespace}:{actor_id}:`` and nowhere else, and a failure of the budget
or of the store must fail the call and kill the sandbox.
"""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import Recorder, actor_def

from service.errors import ResourceLimitExceeded, SandboxUnavailable
from service.manifest.model import ActorDef
from service.sandbox.base import CallRequest, Worker
from service.state.base import StoreDown
from service.state.context import StateContext
from service.state.embedded import EmbeddedStore
from service.state.session import StateBudget, StateSession

Start = Callable[[ActorDef], Awaitable[Worker]]

PYTHON = """
    async def process(context):
        state = context.get_state()
        first = await state.increment("count")
        second = await state.increment("count", 10)
        await state.set("doc", {"a": [1, 2]})
        doc = await state.get("doc")
        missing = await state.get("nope", "fallback")
        length = await state.extend("items", [1, 2, 3])
        popped = await state.pop("items")
        pushed = await state.push("items", "x")
        down = await state.decrement("count", 3)
        gone = await state.delete("doc")
        legacy = context.get_state("count", 0)
        context.set_state("legacy", legacy + 1)
        try:
            await state.increment("legacy_text_key_missing_is_zero")
            await state.set("text", "abc")
            await state.increment("text")
            refused = None
        except TypeError as exc:
            refused = type(exc).__name__
        return [first, second, doc, missing, length, popped, pushed, down, gone, legacy,
                refused, context.state]
"""

JAVASCRIPT = """
    async function process(context) {
      const state = context.getState();
      const first = await state.increment("count");
      const second = await state.increment("count", 10);
      await state.set("doc", {a: [1, 2]});
      const doc = await state.get("doc");
      const missing = await state.get("nope", "fallback");
      const length = await state.extend("items", [1, 2, 3]);
      const popped = await state.pop("items");
      const pushed = await state.push("items", "x");
      const down = await state.decrement("count", 3);
      const gone = await state.delete("doc");
      // the origin's form, unawaited: answered at once on persistent state too
      const legacy = context.getState("count", 0);
      context.setState("legacy", legacy + 1);
      let refused = null;
      try {
        await state.increment("legacy_text_key_missing_is_zero");
        await state.set("text", "abc");
        await state.increment("text");
      } catch (err) {
        refused = err.name;
      }
      return [first, second, doc, missing, length, popped, pushed, down, gone, legacy,
              refused, context.state];
    }
"""

EXPECTED = [1, 11, {"a": [1, 2]}, "fallback", 3, 1, 3, 8, True, 8, "TypeError", {}]


def _script(folder: Path, name: str, source: str) -> ActorDef:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    path.chmod(0o644)
    return actor_def(path)


def _session(store: Any, actor_id: str, ops: int = 100) -> StateSession:
    return StateSession(store, StateContext("default", actor_id), StateBudget(ops, 100_000))


def _request(actor: ActorDef, session: StateSession | None) -> CallRequest:
    return CallRequest(actor.id, {}, {}, {}, 1234567890, state_ops=session)


@pytest.mark.parametrize(("name", "source"), [("py_state.py", PYTHON),
                                              ("js_state.js", JAVASCRIPT)])
async def test_every_operation_reaches_the_store(start: Start, scratch_dir: Path, name: str,
                                                 source: str) -> None:
    actor = _script(scratch_dir, name, source)
    store = EmbeddedStore(0)
    worker = await start(actor)
    outcome = await worker.call(_request(actor, _session(store, actor.id)), Recorder())
    assert outcome.return_value == EXPECTED
    prefix = f"default:{actor.id}:"
    assert await store.get(prefix + "count") == "8"
    assert await store.get(prefix + "legacy") == "9"
    assert await store.get(prefix + "items") == '[2,3,"x"]'
    assert await store.get(prefix + "doc") is None
    assert set(store._data) == {prefix + k for k in
                                ("count", "legacy", "items", "text",
                                 "legacy_text_key_missing_is_zero")}
    # the same worker serves the next call, inline this time: the handle works there too
    outcome = await worker.call(_request(actor, None), Recorder())
    assert outcome.return_value[:2] == [1, 11]
    assert outcome.state["count"] == 8 and outcome.state["legacy"] == 9
    assert worker.alive


async def test_javascript_operations_started_together_each_get_their_answer(
        start: Start, scratch_dir: Path) -> None:
    """Promise.all of state operations: each is answered (in turn), a refused one rejects
    only its own promise, and the worker serves on."""
    actor = _script(scratch_dir, "together.js", """
        async function process(context) {
          const state = context.getState();
          await state.set("text", "abc");
          const counts = await Promise.all([1, 2, 3].map((n) => state.increment("n", n)));
          const refused = await state.increment("text").then(() => null, (err) => err.name);
          const [doc, items] = await Promise.all([state.get("nope", "fallback"),
                                                  state.extend("items", [1, 2])]);
          return { counts, refused, doc, items };
        }
    """)
    store = EmbeddedStore(0)
    worker = await start(actor)
    for calls in (1, 2):
        outcome = await worker.call(_request(actor, _session(store, actor.id)), Recorder())
        assert outcome.return_value == {"counts": [6 * calls - 5, 6 * calls - 3, 6 * calls],
                                        "refused": "TypeError", "doc": "fallback",
                                        "items": 2 * calls}
    assert worker.alive


async def test_the_budget_fails_the_call_and_kills_the_sandbox(start: Start,
                                                               scratch_dir: Path) -> None:
    actor = _script(scratch_dir, "greedy.py", """
        def process(context):
            state = context.get_state()
            for i in range(1000):
                state.set(f"k{i}", i)
    """)
    worker = await start(actor)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(_request(actor, _session(EmbeddedStore(0), actor.id, ops=5)),
                          Recorder())
    assert caught.value.data == {"resource": "state", "limit": {"ops": 5}}
    assert not worker.alive


async def test_a_store_that_is_down_fails_the_call_with_32009(start: Start,
                                                              scratch_dir: Path) -> None:
    class Down(EmbeddedStore):
        name = "redis"

        async def increment(self, key: str, amount: int) -> int:
            raise StoreDown("connection refused")

    actor = _script(scratch_dir, "down.js", """
        async function process(context) { return await context.getState().increment("n"); }
    """)
    worker = await start(actor)
    with pytest.raises(SandboxUnavailable) as caught:
        await worker.call(_request(actor, _session(Down(0), actor.id)), Recorder())
    assert caught.value.data == {"backend": "state:redis", "reason": "connection refused"}
    assert not worker.alive


async def test_the_origins_javascript_example_counts_on_persistent_state(
        start: Start, scratch_dir: Path) -> None:
    """protocol.md's JavaScript actor, as written: getState(key, fallback) and setState,
    unawaited, read and write the store at once (a promise there stored "[object Promise]1");
    a refused setState throws where it is called."""
    actor = _script(scratch_dir, "origin_js.js", """
        async function process(context) {
            const value = context.getInput("input", 0);
            await context.sendOutput("output", value * 2);
            context.setState("count", context.getState("count", 0) + 1);
            console.log("hello");
            let refused = null;
            try { context.setState("", 1); } catch (err) { refused = err.name; }
            return { status: "completed", refused };
        }
    """)
    store = EmbeddedStore(0)
    worker = await start(actor)
    for count in (1, 2):
        outcome = await worker.call(_request(actor, _session(store, actor.id)), Recorder())
        assert outcome.return_value == {"status": "completed", "refused": "TypeError"}
        assert await store.get(f"default:{actor.id}:count") == str(count)
