import sys


async def process(context):
    print("first line")
    await context.send_output("output", "between")
    print("to stderr", file=sys.stderr)
    context.set_state("seen", True)
    return {"status": "completed"}
