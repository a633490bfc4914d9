"""The transport's floor: a bare aiohttp WebSocket server with canned JSON-RPC answers.

    python -m bench.echo --port N

For every frame it reads the request's ``id`` and sends back what the real server
sends for a doubler call: one ``output`` notification, then the result, both canned.
No validation, no sandbox, no task per frame: what is left is aiohttp, one JSON parse
and two writes, which is what any server on this stack pays per call.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from service.eventloop import loop_factory

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTOR = "doubler"
RESULT = {"outputs": {"output": 42}, "emitted": [{"port": "output", "data": 42, "seq": 0}],
          "return": {"status": "completed"}, "state": {}, "duration_ms": 0.5}
RESULT_TEXT = json.dumps(RESULT, separators=(",", ":"))


def canned_frames(request_id: Any) -> tuple[str, str]:
    """The canned notification and response for ``request_id``."""
    rid = json.dumps(request_id)
    notification = ('{"jsonrpc":"2.0","method":"output","params":{"request_id":' + rid
                    + ',"actor_id":"doubler","port":"output","data":42,"seq":0,'
                    '"timestamp":1764151200123}}')
    response = '{"jsonrpc":"2.0","result":' + RESULT_TEXT + ',"id":' + rid + "}"
    return notification, response


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            break
        message = json.loads(msg.data)
        notification, response = canned_frames(message.get("id"))
        await ws.send_str(notification)
        await ws.send_str(response)
    return ws


async def healthz_handler(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(handler: Handler = websocket_handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/", handler)
    app.router.add_get("/healthz", healthz_handler)
    return app


def serve(argv: Sequence[str] | None, handler: Handler, module: str, description: str) -> int:
    """Run ``handler`` as the WebSocket server ``python -m module`` (the echo or the pipe
    floor), on the server's event loop."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--busy-poll-us", type=int, default=0,
                        help="poll this long before the loop sleeps, as the server's busy_poll_us")
    args = parser.parse_args(argv)
    loop = loop_factory(args.busy_poll_us)()
    web.run_app(create_app(handler), host=args.host, port=args.port, access_log=None,
                print=None, loop=loop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return serve(argv, websocket_handler, "bench.echo", __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
