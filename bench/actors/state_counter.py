# The doubler plus one persistent-state increment per call (the host's counter pattern).
async def process(context):
    await context.get_state().increment("calls")
    await context.send_output("output", context.get_input("input", 0) * 2)
    return {"status": "completed"}
