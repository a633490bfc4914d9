"""Send one output, then sleep forever. Must end -32005, the output already delivered."""

import time


async def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    await context.send_output("output", {"sent": True})
    time.sleep(10**6)
