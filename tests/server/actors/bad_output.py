async def process(context):
    if context.get_input("mode") == "type":
        await context.send_output("output", "not a number")
    else:
        await context.send_output("nowhere", 1)
    return None
