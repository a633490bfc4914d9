# doubler_cold.py, unchanged: the manifest adds a dependency set (mounted at /deps, on
# sys.path), so the difference with doubler/doubler_cold is what the platform adds, not
# the library's own import time (which any way of providing the library would cost).
async def process(context):
    value = context.get_input("input", 0)
    result = value * 2
    await context.send_output("output", result)
    return {"status": "completed"}
