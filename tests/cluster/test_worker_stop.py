"""A worker told to stop stops, even when its cleanup hangs, and says where it hung."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.cluster import node
from service.cluster.streams import Backoff, stop_if_cancelled


async def test_a_stuck_shutdown_names_the_waiting_tasks_and_exits(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    exits: list[int] = []
    monkeypatch.setattr(node.os, "_exit", exits.append)
    monkeypatch.setattr(node.logging, "shutdown", lambda: None)

    async def waits_for_ever() -> None:
        await asyncio.Event().wait()

    stuck = asyncio.create_task(waits_for_ever())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger=node.log.name):
        node._exit_stuck()
    stuck.cancel()
    assert exits == [1]
    assert any("shutdown is stuck" in r.message and "waits_for_ever" in r.message
               for r in caplog.records)
    assert "forced exit" in caplog.records[-1].message


async def test_a_loop_whose_client_swallows_the_cancellation_still_stops() -> None:
    """redis-py may end a cancelled command with an error of its own: a retrying loop that
    catches it went on for ever, and the worker's shutdown waited for it."""

    async def command() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("connection closed by the cancellation") from None

    async def retrying() -> None:
        backoff = Backoff(0.01)
        while True:
            stop_if_cancelled()
            try:
                await command()
            except ConnectionError:
                await backoff.wait()

    task = asyncio.create_task(retrying())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
