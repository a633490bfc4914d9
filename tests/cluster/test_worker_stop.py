"""A worker told to stop stops, even when its cleanup hangs, and says where it hung."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.cluster import node


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
