"""Counts the items of an order (benchmark only): the work is the schemas' validation."""


async def process(context):
    order = context.get_input("input")
    await context.send_output("output", sum(line["quantity"] for line in order["lines"]))
    return None
