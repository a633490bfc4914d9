"""Large decoded values are parked out of the garbage collector's reach while their frames
and calls hold them, and settles collect what was frozen with them (service/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service import jsonfast
from service.eventloop import drop_in_turn as real_drop_in_turn
from service.heap import HEAP, MOST_PARKED_S, PARK_CONTAINERS, SETTLE_SHARE, Heap, settled
from service.rpc import core
from service.rpc.core import Call, Connection, Dispatcher

# More containers than PARK_CONTAINERS, in more text than jsonfast.GC_PAUSE_CHARS.
LARGE = "[" + ",".join(["[]"] * 2 * PARK_CONTAINERS) + "]"
SMALL = "[[], {}]"
assert len(LARGE) > jsonfast.GC_PAUSE_CHARS


def in_reach(value: Any) -> bool:
    """Does a collection scan ``value``? (Frozen objects are in no generation.)"""
    return any(found is value for found in gc.get_objects())


@pytest.fixture
async def serving() -> AsyncIterator[None]:
    """The heap as a serving server has it, a settle allowed at any time."""
    async with settled():
        HEAP.next_settle = 0.0
        yield


async def test_a_large_decoded_value_is_parked_while_serving(serving: None) -> None:
    small = jsonfast.loads(SMALL)
    assert in_reach(small)
    parks = HEAP.parks
    large = jsonfast.loads(LARGE)
    assert HEAP.parks == parks + 1
    assert not in_reach(large) and len(large) == 2 * PARK_CONTAINERS
    assert not in_reach(small)  # frozen with it: collected at the next settle, if need be
    HEAP.held_since(parks)
    HEAP.release(1)


def test_nothing_is_parked_unless_serving() -> None:
    parks = HEAP.parks
    large = jsonfast.loads(LARGE)
    assert in_reach(large) and HEAP.parks == parks


async def test_a_settle_waits_until_no_parked_value_is_held(serving: None) -> None:
    settles, parks = HEAP.settles, HEAP.parks
    large = jsonfast.loads(LARGE)
    held = HEAP.held_since(parks)
    assert held == 1
    HEAP.settle_if_due()
    await asyncio.sleep(0)
    assert HEAP.settles == settles  # its collection would have scanned the value
    HEAP.release(held)
    await asyncio.sleep(0)
    assert HEAP.settles == settles + 1 and HEAP.held == 0
    assert not in_reach(large)  # still alive: frozen again by the settle


def test_when_a_settle_is_due() -> None:
    heap = Heap()
    assert not heap.due(1e9)  # nothing parked
    heap.first_parked, heap.held = 100.0, 1
    assert not heap.due(100.0 + MOST_PARKED_S - 1)  # a value is held
    assert heap.due(100.0 + MOST_PARKED_S)  # held nonstop: settled over
    heap.held = 0
    assert heap.due(100.5)
    heap.next_settle = 200.0
    assert not heap.due(199.0)  # the last settle was too recent


def test_settles_take_a_bounded_share_of_the_time() -> None:
    heap = Heap()
    try:
        took_s = heap.settle()
        ended = time.monotonic()
        assert ended - 0.05 <= heap.next_settle - took_s / SETTLE_SHARE <= ended
        assert heap.first_parked is None and heap.settles == 1
    finally:
        gc.unfreeze()


async def test_a_frame_holds_its_parked_value_until_it_is_answered(
        serving: None, monkeypatch: pytest.MonkeyPatch) -> None:
    held: list[int] = []
    dropped: list[int] = []  # a heavy frame's value is freed in a heavy step of its own

    def drop_in_turn(value: Any, then: Any) -> None:
        dropped.append(len(value["params"]["items"]))
        real_drop_in_turn(value, then)

    monkeypatch.setattr(core, "drop_in_turn", drop_in_turn)

    async def count(p: dict[str, Any], call: Call) -> int:
        held.append(HEAP.held)
        return len(p["items"])

    async def send(text: str) -> None:
        pass

    dispatcher = Dispatcher()
    dispatcher.register("count", count, {"type": "object", "properties": {"items": {}}})
    frame = '{"jsonrpc":"2.0","id":1,"method":"count","params":{"items":' + LARGE + "}}"
    settles = HEAP.settles
    answer = await dispatcher.handle_frame(frame, Connection(send))
    assert answer == f'{{"jsonrpc":"2.0","result":{2 * PARK_CONTAINERS},"id":1}}'
    assert held == [1]
    assert dropped == [2 * PARK_CONTAINERS]
    for _ in range(3):  # freed in a turn of its own (drop_in_turn), then released
        await asyncio.sleep(0)
    assert HEAP.held == 0 and HEAP.settles == settles + 1
    await dispatcher.handle_frame('{"jsonrpc":"2.0","id":2,"method":"count","params":'
                                  '{"items":[1]}}', Connection(send))
    assert dropped == [2 * PARK_CONTAINERS]  # a light frame's, at once


async def test_a_release_after_serving_ended_freezes_nothing() -> None:
    """Calls may end after the server stopped settling (a worker's shutdown grace)."""
    async with settled():
        parks = HEAP.parks
        jsonfast.loads(LARGE)
        held = HEAP.held_since(parks)
    assert gc.get_freeze_count() == 0
    HEAP.next_settle = 0.0
    HEAP.release(held)
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0 and HEAP.held == 0
