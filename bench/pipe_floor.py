"""The warm call's floor: the echo plus one round trip through a pipe to a child process.

    python -m bench.pipe_floor --port N

The echo (bench/echo.py) answers every frame itself. This server does what any design
with a process per sandbox must do besides: each connection gets one child (the system
Python, as the process sandbox runs, but no bubblewrap, cgroups, harness or checks), and
each frame's input is written to it as a JSON line; the child answers with an ``output``
line and a ``result`` line, and the server sends the canned notification and response
(the echo's) after reading each. Its CPU per call at 8 connections is what the real
server's could come down to without dropping the pipe hop; the difference is the
service's own work (validation, pools, host checks, budgets, the call log).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aiohttp import WSMsgType, web

from bench.echo import canned_frames, serve

PYTHON = "/usr/bin/python3"
# The child: read a call line, write an output line and a result line, each in a write.
CHILD = """
import json, os
pending = b""
while True:
    while b"\\n" not in pending:
        data = os.read(0, 65536)
        if not data:
            raise SystemExit(0)
        pending += data
    line, _, pending = pending.partition(b"\\n")
    call = json.loads(line)
    os.write(1, json.dumps({"type": "output", "port": "output",
                            "data": call["input"] * 2}).encode() + b"\\n")
    os.write(1, json.dumps({"type": "result", "return": {"status": "completed"},
                            "state": {}}).encode() + b"\\n")
"""


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    child = await asyncio.create_subprocess_exec(
        PYTHON, "-I", "-B", "-u", "-c", CHILD,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            message = json.loads(msg.data)
            line = {"type": "call", "input": message["params"]["payload"]["input"]}
            child.stdin.write(json.dumps(line).encode() + b"\n")
            notification, response = canned_frames(message.get("id"))
            json.loads(await child.stdout.readline())
            await ws.send_str(notification)
            json.loads(await child.stdout.readline())
            await ws.send_str(response)
    finally:
        child.kill()
        await child.wait()
    return ws


def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, websocket_handler, "bench.pipe_floor", __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
