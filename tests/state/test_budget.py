"""A call's state budget (service/state/session.py): every byte the server moves is paid,
no value grows past what one call can rewrite, and the embedded store's size is capped."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.errors import ResourceLimitExceeded, SandboxUnavailable
from service.settings import SettingsError, StateSettings, settings_from_mapping
from service.state import embedded
from service.state.base import StateStore, StoreDown
from service.state.context import StateContext
from service.state.embedded import EmbeddedStore
from service.state.select import open_store
from service.state.session import StateBudget, StateSession

KEY = "default:counter:"  # every full key starts with it (16 bytes)


def _session(store: StateStore, size: int = 100_000) -> StateSession:
    return StateSession(store, StateContext("default", "counter"), StateBudget(1000, size))


async def _op(session: StateSession, op: str, key: str = "k", **args: Any) -> dict[str, Any]:
    return await session.handle({"type": "state", "id": 1, "op": op, "key": key, **args})


@pytest.mark.parametrize(("op", "key", "args", "charged"), [
    ("set", "k", {"value": "abc"}, 17 + 5),  # the key, the text written ('"abc"')
    ("set", "u", {"value": "é"}, 17 + 4),  # UTF-8 bytes, not characters
    ("get", "k", {}, 17 + 5),  # the key, the text read
    ("get", "m", {}, 17),  # nothing to read
    ("delete", "k", {}, 17),  # no value moves
    ("increment", "n", {}, 17 + 20),  # a 64-bit integer's text, at most 20 bytes
    ("decrement", "n", {"amount": 3}, 17 + 20),
    ("push", "m", {"value": 1}, 17 + 3 + 0 + 3),  # the key, "[1]" added, no list read, "[1]"
    ("extend", "l", {"values": [2, 3]}, 17 + 5 + 3 + 7),  # "[2,3]", "[1]" read, "[1,2,3]"
    ("pop", "l", {}, 17 + 3 + 2),  # "[1]" read, "[]" written
    ("pop", "m", {}, 17),
])
async def test_each_operation_pays_for_the_bytes_it_moves(
        store: StateStore, op: str, key: str, args: dict[str, Any], charged: int) -> None:
    await store.set(KEY + "k", '"abc"')
    await store.set(KEY + "l", "[1]")
    s = _session(store)
    assert (await _op(s, op, key, **args))["ok"]
    assert s.budget.bytes == charged


@pytest.mark.parametrize("message", [
    {"op": "nope" * 100_000, "key": "k"}, {"op": "get", "key": ""}, {"op": None},
])
async def test_a_refused_message_costs_an_operation_and_a_short_reply(
        store: StateStore, message: dict[str, Any]) -> None:
    """A script that floods its channel with messages the session refuses runs out of
    operations like one that floods it with real ones; the refusal quotes little."""
    s = StateSession(store, StateContext("default", "counter"), StateBudget(3, 100_000))
    for _ in range(3):
        reply = await s.handle({"type": "state", "id": 1, **message})
        assert not reply["ok"] and len(reply["message"]) < 100
    with pytest.raises(ResourceLimitExceeded):
        await s.handle({"type": "state", "id": 1, **message})


async def test_a_list_cannot_grow_past_a_quarter_of_the_calls_bytes(store: StateStore) -> None:
    """The review's repro, scaled down: extend a list call after call. It stops at the
    cap, and a list at the cap can still be changed in one call."""
    budget = 4000  # a value is at most 1000 bytes
    lengths = []
    for _ in range(20):
        reply = await _op(_session(store, budget), "extend", "big", values=[0] * 100)
        if not reply["ok"]:
            break
        lengths.append(reply["value"])
    assert lengths == [100, 200, 300, 400]  # "[0,0,...]": 801 bytes; 500 items: 1001
    assert reply == {"type": "state_reply", "id": 1, "ok": False, "error_type": "ValueError",
                     "message": "a state value is at most 1000 bytes (as JSON)"}
    text = await store.get(KEY + "big")
    assert text is not None and len(text) == 801  # untouched by the refused extend
    reply = await _op(_session(store, budget), "extend", "big", values=[0] * 99)
    assert reply["value"] == 499  # 999 bytes: at the cap
    s = _session(store, budget)  # a list at the cap: read, changed and written back
    assert (await _op(s, "pop", "big"))["value"] == 0
    assert s.budget.bytes == len(KEY + "big") + 999 + 997


async def test_a_value_over_the_cap_is_refused_before_the_store_is_read(
        store: StateStore) -> None:
    s = _session(store, 4000)
    reply = await _op(s, "push", "l", value="x" * 1000)
    assert reply["ok"] is False and reply["error_type"] == "ValueError"
    assert s.budget.bytes == 17 + 1004  # the key, the value encoded; no list read
    assert (await _op(s, "set", value="x" * 1000))["error_type"] == "ValueError"
    assert await store.get(KEY + "l") is None and await store.get(KEY + "k") is None


@pytest.mark.parametrize(("op", "args"), [("get", {}), ("pop", {}), ("push", {"value": 1}),
                                          ("extend", {"values": []})])
async def test_a_stored_value_larger_than_what_the_call_has_left_is_not_read(
        store: StateStore, op: str, args: dict[str, Any]) -> None:
    big = "[" + ",".join(["1"] * 3000) + "]"  # written by someone else: 6001 bytes
    await store.set(KEY + "k", big)
    s = _session(store, 4000)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await _op(s, op, **args)
    assert caught.value.to_json()["data"] == {"resource": "state", "limit": {"bytes": 4000}}
    assert s.budget.bytes < 4000  # refused on its size: nothing read, decoded or written
    assert await store.get(KEY + "k") == big


async def test_a_call_moves_at_most_its_bytes(store: StateStore) -> None:
    await store.set(KEY + "k", "[" + ",".join(["1"] * 400) + "]")  # 801 bytes
    s = _session(store, 4000)
    with pytest.raises(ResourceLimitExceeded):
        for _ in range(100):
            await _op(s, "pop")
    # two pops fitted (1617 + 1613 bytes); the third list is over what is left: not read
    assert await store.get(KEY + "k") == "[" + ",".join(["1"] * 398) + "]"


async def test_a_full_embedded_store_fails_the_call_with_32009() -> None:
    s = _session(EmbeddedStore(0, max_bytes=100))
    assert (await _op(s, "set", value="x" * 70))["ok"]
    with pytest.raises(SandboxUnavailable) as caught:
        await _op(s, "set", "j", value="y" * 70)
    assert caught.value.CODE == -32009
    assert caught.value.data["backend"] == "state:embedded"
    assert "embedded store is full" in caught.value.data["reason"]


def test_the_embedded_store_size_is_a_setting() -> None:
    assert StateSettings().embedded_max_bytes == 256 * 1024 * 1024
    s = settings_from_mapping({"state": {"embedded_max_bytes": 2_000_000}})
    store = open_store(s.state)
    assert isinstance(store, EmbeddedStore) and store.max_bytes == 2_000_000
    with pytest.raises(SettingsError, match=r"state\.embedded_max_bytes: must be at least "
                                            r"state\.bytes_per_call"):
        settings_from_mapping({"state": {"embedded_max_bytes": 1000, "bytes_per_call": 2000}})
    with pytest.raises(SettingsError, match="embedded_max_bytes: must be positive"):
        settings_from_mapping({"state": {"embedded_max_bytes": 0}})


async def test_expired_keys_are_forgotten_oldest_write_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(embedded.time, "monotonic", lambda: now[0])
    store = EmbeddedStore(10)
    await store.set("a", "1")
    now[0] = 1005.0
    await store.set("b", "2")
    now[0] = 1008.0
    await store.set("a", "3")  # written again: it expires after b now
    now[0] = 1016.0
    store._purge()
    assert list(store._data) == ["a"] and await store.get("a") == "3"
    now[0] = 1019.0
    store._purge()
    assert list(store._data) == [] and (await store.check())["bytes"] == 0


async def test_a_full_store_does_not_scan_every_key_at_each_write() -> None:
    """A write to a full store sweeps expired keys first: it looked at every key, so with
    300,000 of them each refused write held the event loop for ~30 ms (200: 6 s)."""
    store = EmbeddedStore(3600, max_bytes=10**9)
    for i in range(300_000):
        await store.set(f"k{i}", "v")
    store.max_bytes = store._bytes  # full
    started = time.perf_counter()
    for i in range(200):
        with pytest.raises(StoreDown):
            await store.set(f"new{i}", "v")
    assert time.perf_counter() - started < 0.5
