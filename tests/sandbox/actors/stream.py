"""Sends one output, then waits until the host answers it by creating /actor/<go>.

The go file can only appear if the host received the output while this script still runs.
"""

import os
import time


async def process(context):
    go = os.path.join("/actor", context.get_input("go"))
    await context.send_output("output", 1)
    print("waiting for", os.path.basename(go))
    deadline = time.monotonic() + 5
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    await context.send_output("output", 2)
    return {"saw_go": os.path.exists(go)}
