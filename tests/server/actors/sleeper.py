import asyncio


async def process(context):
    await context.send_output("started", True)
    await asyncio.sleep(context.get_input("seconds", 0))
    return {"slept": context.get_input("seconds", 0)}
