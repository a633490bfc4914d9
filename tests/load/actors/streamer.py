"""Sends a tick every 10 ms until it has sent `ticks`: still running when its connection drops."""

import asyncio
from typing import Any


async def process(context: Any) -> dict[str, str]:
    for n in range(context.get_input("ticks", 1)):
        await context.send_output("tick", n)
        await asyncio.sleep(0.01)
    return {"status": "completed"}
