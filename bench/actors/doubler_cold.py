# manifests/doubler/doubler.py (the origin README's example) without its unused import.
async def process(context):
    value = context.get_input("input", 0)
    result = value * 2
    await context.send_output("output", result)
    return {"status": "completed"}
