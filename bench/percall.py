"""The server's own CPU per call, without the transport or a sandbox.

    python -m bench.percall [--calls N] [--config PATH]

The dispatcher, the methods, the runtime and the pool, in this process, on a fake
backend whose worker answers at once (it writes the call line as a real worker
would, yields to the loop once, sends one output, returns): what the server's
Python costs per `process` call between the frame's text and the harness's pipe
and back, for `doubler` and the schema-heavy `order_heavy` / `order_noschema`
(bench/actors). No socket and no sandbox, so other work on the machine skews it
far less than the round trips of `python -m bench`; the best of three runs is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.load import INPUT
from bench.runner import heavy_order_call
from bench.servers import BENCH_ACTORS, ROOT
from service.log import setup_logging
from service.manifest.model import ActorDef
from service.metrics import Metrics
from service.rpc.core import Connection, Dispatcher
from service.rpc.methods import register_methods
from service.runtime import Runtime
from service.sandbox.base import (
    Availability,
    CallOutcome,
    CallRequest,
    EventSink,
    OutputEvent,
    call_line,
)
from service.settings import load_settings

REPEATS = 3


class AnsweringWorker:
    """Answers each call at once: the doubled input, or an order's item count."""

    alive = True

    def claim(self) -> bool:
        return True

    async def call(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        call_line(request, "")  # what a real worker writes to its harness
        await asyncio.sleep(0)  # the harness's round trip, as one turn of the loop
        value = request.payload["input"]
        if isinstance(value, dict):
            value = sum(line["quantity"] for line in value["lines"])
        else:
            value *= 2
        await on_event(OutputEvent("output", value))
        return CallOutcome(None, {})

    async def reset(self) -> None:
        return None

    async def close(self) -> None:
        return None


class AnsweringBackend:
    name = "fake"

    async def availability(self) -> Availability:
        return Availability(self.name, True)

    async def start_worker(self, actor: ActorDef) -> AnsweringWorker:
        return AnsweringWorker()

    async def aclose(self) -> None:
        return None


def frames(actor_id: str, value: Any, count: int) -> list[str]:
    return [json.dumps({"jsonrpc": "2.0", "id": i, "method": "process",
                        "params": {"actor_id": actor_id, "payload": {"input": value}}})
            for i in range(count)]


async def cpu_us_per_call(dispatcher: Dispatcher, texts: list[str]) -> float:
    """The best of REPEATS runs over ``texts``: CPU time of this process per call, in µs."""
    connection = Connection(_discard)
    answer = await dispatcher.handle_frame(texts[0], connection)
    if answer is None or '"error"' in answer:
        raise RuntimeError(f"the call failed: {answer}")
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for text in texts:
            await dispatcher.handle_frame(text, connection)
        best = min(best, (time.process_time() - started) / len(texts) * 1e6)
    return best


async def _discard(text: str) -> None:
    return None


async def measure(config: Path, calls: int) -> dict[str, float]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # the call log on, as in production, into nothing
    with open(os.devnull, "w") as sink:
        setup_logging("info", "text", sink)
        try:
            return await _measure(config, calls)
        finally:
            root.handlers[:], root.level = handlers, level


async def _measure(config: Path, calls: int) -> dict[str, float]:
    settings = load_settings(config, manifest_paths=[ROOT / "manifests", BENCH_ACTORS])
    runtime = Runtime(settings, AnsweringBackend())
    await runtime.start()
    try:
        dispatcher = Dispatcher(limits=settings.connections)
        register_methods(dispatcher, runtime, Metrics(runtime.pool_stats))
        order = heavy_order_call().input
        cases = {"doubler": INPUT, "order_heavy": order, "order_noschema": order}
        return {actor: await cpu_us_per_call(dispatcher, frames(actor, value, calls))
                for actor, value in cases.items()}
    finally:
        await runtime.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.percall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per run (default 3000)")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "settings.toml")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.config, max(1, args.calls)))
    for actor, micros in results.items():
        print(f"{actor:16s} {micros:8.1f} µs of server CPU per call (no transport, no sandbox)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
