"""Sends `n` outputs, one every `ms` milliseconds."""

import asyncio


async def process(context):
    for n in range(context.get_input("n")):
        await context.send_output("tick", n)
        await asyncio.sleep(context.get_input("ms") / 1000)
    return {"sent": context.get_input("n")}
