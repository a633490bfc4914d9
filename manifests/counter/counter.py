"""Multiplies its input by config["factor"] and counts its calls in state["count"]."""


async def process(context):
    calls = context.get_state("count", 0) + 1
    context.set_state("count", calls)
    factor = context.get_config("factor", 1)
    await context.send_output("result", context.get_input("value", 0) * factor)
    await context.send_output("calls", calls)
    return {"status": "completed", "calls": calls}
