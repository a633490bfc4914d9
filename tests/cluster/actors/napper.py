"""Sends `ticks` outputs, then sleeps `ms` milliseconds: a sleep-bound call for the cluster."""

import asyncio


async def process(context):
    for n in range(context.get_input("ticks", 0)):
        await context.send_output("tick", n)
    await asyncio.sleep(context.get_input("ms", 0) / 1000)
    return {"slept_ms": context.get_input("ms", 0)}
