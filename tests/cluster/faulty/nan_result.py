"""Forges its result frame: {"x": NaN}, which is no JSON the channel or the wire takes."""

import time


async def process(context):
    context._channel.send_bytes(b'{"type":"result","return":{"x":NaN},"state":{}}\n')
    time.sleep(5)  # the forged frame is the answer; this never returns first
    return {}
