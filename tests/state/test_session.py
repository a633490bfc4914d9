"""One call's state session (service/state/session.py) over every store, and the context."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from service.errors import InvalidParams, ResourceLimitExceeded, SandboxUnavailable
from service.state.base import StateStore, StoreDown
from service.state.context import (
    StateContext,
    character_problem,
    is_state_context,
    state_context,
)
from service.state.session import StateBudget, StateSession


def _session(store: StateStore, ops: int = 100, size: int = 100_000) -> StateSession:
    return StateSession(store, StateContext("default", "counter"), StateBudget(ops, size))


async def _op(session: StateSession, op: str, key: Any = "k", **args: Any) -> dict[str, Any]:
    reply = await session.handle({"type": "state", "id": 7, "op": op, "key": key, **args})
    assert reply["type"] == "state_reply" and reply["id"] == 7
    return reply


async def test_every_operation(store: StateStore) -> None:
    s = _session(store)
    assert await _op(s, "get") == {"type": "state_reply", "id": 7, "ok": True,
                                   "found": False, "value": None}
    assert (await _op(s, "set", value={"a": [1, "é"]}))["ok"]
    assert await store.get("default:counter:k") == '{"a":[1,"é"]}'
    assert (await _op(s, "get"))["value"] == {"a": [1, "é"]}
    assert (await _op(s, "delete"))["value"] is True
    assert (await _op(s, "delete"))["value"] is False
    assert (await _op(s, "increment", "n"))["value"] == 1
    assert (await _op(s, "increment", "n", amount=5))["value"] == 6
    assert (await _op(s, "decrement", "n", amount=2))["value"] == 4
    assert (await _op(s, "push", "l", value="a"))["value"] == 1
    assert (await _op(s, "extend", "l", values=[{"b": 1}, None]))["value"] == 3
    assert await store.get("default:counter:l") == '["a",{"b":1},null]'
    assert [(await _op(s, "pop", "l"))["value"] for _ in range(4)] == ["a", {"b": 1}, None, None]
    assert (await _op(s, "pop", "absent"))["value"] is None


async def test_a_value_that_is_not_json_reads_back_as_a_string(store: StateStore) -> None:
    await store.set("default:counter:raw", "hello world")  # written by someone else
    assert (await _op(_session(store), "get", "raw"))["value"] == "hello world"


async def test_keys_stay_below_the_calls_prefix(store: StateStore) -> None:
    s = _session(store)
    await _op(s, "set", "../other:x", value=1)
    await _op(s, "set", "*", value=2)
    assert await store.get("default:counter:../other:x") == "1"
    assert await store.get("default:counter:*") == "2"
    assert await store.get("other:x") is None


@pytest.mark.parametrize(("message", "error_type"), [
    ({"op": "explode", "key": "k"}, "ValueError"),
    ({"op": "get", "key": 5}, "TypeError"),
    ({"op": "get", "key": ""}, "TypeError"),
    ({"op": "get", "key": "a\nb"}, "ValueError"),
    ({"op": "get", "key": "a\x85b"}, "ValueError"),  # C1 controls are control characters
    ({"op": "get", "key": "a\x7f"}, "ValueError"),
    ({"op": "set", "key": "\udcff", "value": 1}, "ValueError"),  # no UTF-8 form: no Redis key
    ({"op": "increment", "key": "a\ud800b"}, "ValueError"),
    ({"op": "get", "key": "k" * 2000}, "ValueError"),
    ({"op": "increment", "key": "k", "amount": 1.5}, "TypeError"),
    ({"op": "increment", "key": "k", "amount": True}, "TypeError"),
    ({"op": "increment", "key": "k", "amount": 2**70}, "OverflowError"),
    ({"op": "set", "key": "k", "value": float("nan")}, "ValueError"),
    ({"op": "extend", "key": "k", "values": "abc"}, "TypeError"),
])
async def test_bad_operations_answer_an_error_to_the_script(
        store: StateStore, message: dict[str, Any], error_type: str) -> None:
    reply = await _session(store).handle({"type": "state", "id": 1, **message})
    assert reply["ok"] is False and reply["error_type"] == error_type and reply["message"]


async def test_list_operations_on_a_non_list_and_increment_on_text(store: StateStore) -> None:
    s = _session(store)
    await _op(s, "set", value="text")
    for op, args in (("push", {"value": 1}), ("pop", {}), ("increment", {})):
        reply = await _op(s, op, **args)
        assert reply["ok"] is False and reply["error_type"] == "TypeError", op
    assert (await _op(s, "get"))["value"] == "text"


async def test_the_budget_counts_operations_and_bytes(store: StateStore) -> None:
    s = _session(store, ops=3)
    for _ in range(3):
        await _op(s, "get")
    with pytest.raises(ResourceLimitExceeded) as caught:
        await _op(s, "get")
    assert caught.value.to_json()["data"] == {"resource": "state", "limit": {"ops": 3}}
    s = _session(store, size=200)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await _op(s, "set", value="x" * 300)
    assert caught.value.to_json()["data"] == {"resource": "state", "limit": {"bytes": 200}}
    assert await store.get("default:counter:k") is None  # refused before the write


async def test_a_store_that_is_down_fails_the_call() -> None:
    class Down:
        name = "redis"

        async def get(self, key: str, max_bytes: int | None = None) -> str | None:
            raise StoreDown("redis unix:///x: Connection refused")

    s = StateSession(Down(), StateContext("default", "a"), StateBudget(10, 1000))  # type: ignore[arg-type]
    with pytest.raises(SandboxUnavailable) as caught:
        await s.handle({"type": "state", "id": 1, "op": "get", "key": "k"})
    assert caught.value.CODE == -32009
    assert caught.value.data == {"backend": "state:redis",
                                 "reason": "redis unix:///x: Connection refused"}


@pytest.mark.parametrize(("state", "persistent"), [
    ({"namespace": "d", "actor_id": "a"}, True),
    ({"namespace": "d", "actor_id": "a", "redis_url": "redis://x"}, True),
    ({"namespace": "d", "actor_id": "a", "other": 1}, False),
    ({"namespace": "d"}, False),
    ({"namespace": "d", "actor_id": 1}, False),
    ({}, False),
    ([], False),
])
def test_what_selects_persistent_state(state: Any, persistent: bool) -> None:
    assert is_state_context(state) is persistent


@pytest.mark.parametrize(("state", "path"), [
    ({"namespace": "d", "actor_id": "b"}, "/state/actor_id"),
    ({"namespace": "d:e", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "d", "actor_id": "a*"}, "/state/actor_id"),
    ({"namespace": "d\x00", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "d\x85", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "\x9f", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "\ud800", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "d\udcffe", "actor_id": "a"}, "/state/namespace"),
    ({"namespace": "d" * 300, "actor_id": "a"}, "/state/namespace"),
])
def test_an_invalid_context_is_invalid_params(state: dict[str, str], path: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        state_context(state, "a")
    assert caught.value.data["errors"][0]["path"] == path


def test_a_valid_context_gives_the_prefix() -> None:
    context = state_context({"namespace": "default", "actor_id": "a", "redis_url": "x"}, "a")
    assert context.prefix == "default:a:"


@pytest.mark.parametrize(("name", "problem"), [
    ("a\x80", "must not contain control characters"),
    ("\ud800", "must not contain lone surrogates (text that has no UTF-8 form)")])
def test_an_actor_id_that_no_store_can_hold_is_invalid_params(name: str, problem: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        state_context({"namespace": "d", "actor_id": name}, name)
    assert caught.value.data["errors"] == [{"path": "/state/actor_id", "message": problem}]


def test_names_refuse_exactly_the_control_characters_and_the_surrogates() -> None:
    every = "".join(map(chr, range(0x110000)))
    refused = {c for c in every if character_problem(c)}
    assert refused == {c for c in every if unicodedata.category(c) in ("Cc", "Cs")}
    assert character_problem("a\u2028b é ☃") is None  # separators are not control characters


async def test_lone_surrogates_in_values_are_stored_and_read_back_alike(
        store: StateStore) -> None:
    s = _session(store)
    value = {"\udcff": ["x\ud800y", "é", "\U0001f600"]}
    assert (await _op(s, "set", value=value))["ok"]
    # valid UTF-8 (the host's reader and Redis take it); the surrogates stay JSON escapes
    assert await store.get("default:counter:k") == '{"\\udcff":["x\\ud800y","é","😀"]}'
    assert (await _op(s, "get"))["value"] == value
    assert (await _op(s, "push", "l", value="\ud800"))["value"] == 1
    assert (await _op(s, "extend", "l", values=["\udfff", value]))["value"] == 3
    assert [(await _op(s, "pop", "l"))["value"] for _ in range(3)] == ["\ud800", "\udfff", value]


async def test_every_error_is_the_same_on_every_store(store: StateStore) -> None:
    s = _session(store)
    await _op(s, "set", "text", value="five")
    await _op(s, "set", "max", value=2**63 - 1)
    await _op(s, "set", "list", value=[1])
    answers = [await s.handle({"type": "state", "id": 1, **message}) for message in (
        {"op": "increment", "key": "text"},
        {"op": "increment", "key": "max"},
        {"op": "decrement", "key": "n", "amount": -2**63},  # its negation is not 64 bits
        {"op": "increment", "key": "n", "amount": 2**63},
        {"op": "increment", "key": "list"},
        {"op": "push", "key": "text", "value": 1},
        {"op": "pop", "key": "max"},
        {"op": "set", "key": "k", "value": float("inf")},
    )]
    assert [(a["ok"], a.get("error_type"), a.get("message")) for a in answers] == [
        (False, "TypeError", "value is not an integer or out of range"),
        (False, "OverflowError", "increment or decrement would overflow"),
        (False, "OverflowError", "amount is out of the 64-bit range"),
        (False, "OverflowError", "amount is out of the 64-bit range"),
        (False, "TypeError", "value is not an integer or out of range"),
        (False, "TypeError", "the value under this key is not a list"),
        (False, "TypeError", "the value under this key is not a list"),
        (False, "ValueError", "value is not JSON (NaN or Infinity)"),
    ]
    assert await store.get("default:counter:n") is None  # nothing was written
