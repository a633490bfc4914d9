"""The client of the multi-host test, run inside its own network namespace.

Waits until the front sees ``--workers`` live workers, then makes ``--calls`` napper calls
on ``--connections`` connections (closed loop), touches ``--marker`` once ``--mark-after``
calls are answered, and prints a JSON summary: every answer, every output, duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from cluster_support import connected

TICKS = 3


async def wait_workers(base: str, token: str, count: int) -> None:
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/healthz") as response:
                    body = await response.json()
                    if response.status == 200 and body.get("live_workers") == count:
                        return
            except (aiohttp.ClientError, OSError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the front never saw every worker")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://{args.front}"
    await wait_workers(base, args.token, args.workers)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(args.calls):
        queue.put_nowait(n)
    answers: dict[int, list[dict[str, Any]]] = {}
    unexpected: list[Any] = []

    async def loop() -> None:
        async with connected(f"ws://{args.front}/?token={args.token}") as client:
            while not queue.empty():
                n = queue.get_nowait()
                reply = await client.call("process", {"actor_id": "napper", "payload": {
                    "ms": args.ms, "ticks": TICKS}}, timeout_s=120)
                answers.setdefault(n, []).append(reply)
                if len(answers) == args.mark_after:
                    Path(args.marker).touch()
            await asyncio.sleep(1)  # anything sent late would arrive now
            unexpected.extend(client.notes.get("_unexpected", []))
            unexpected.extend(v for k, v in client.notes.items() if k != "_unexpected")

    await asyncio.gather(*(loop() for _ in range(args.connections)))
    async with aiohttp.ClientSession() as session, session.get(
            f"{base}/metrics", headers={"Authorization": f"Bearer {args.token}"}) as response:
        metrics = await response.text()
    return summary(answers, unexpected, metrics)


def summary(answers: dict[int, list[dict[str, Any]]], unexpected: list[Any],
            metrics: str) -> dict[str, Any]:
    bad_outputs = []
    errors = []
    for n, replies in answers.items():
        for reply in replies:
            seqs = [m["params"]["seq"] for m in reply["notes"] if m["method"] == "output"]
            if seqs != list(range(TICKS)):
                bad_outputs.append({"call": n, "seqs": seqs})
            if "error" in reply:
                errors.append(reply["error"])
    return {"answered": len(answers), "answers": sum(len(r) for r in answers.values()),
            "results": sum(1 for r in answers.values() for x in r if "result" in x),
            "errors": errors, "bad_outputs": bad_outputs, "unexpected": unexpected,
            "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--front", required=True)  # host:port
    parser.add_argument("--token", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--ms", type=int, default=300)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--mark-after", type=int, default=20)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
