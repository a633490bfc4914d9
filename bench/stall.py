"""``python -m bench.stall``: how long ``/healthz`` waits while costly values are validated.

The service promises that one call never stalls the others: while hostile payloads are in
flight, ``/healthz`` answers within 100 ms (docs/manifest.md). This measures it. The real
server runs (process backend) on actors of its own, one per case, whose inport schema is
costly to check; each round sends every connection one such payload at once, while a
prober (a process of its own, so the client's work does not delay it) asks for
``/healthz`` every 5 ms. The baseline is the same prober against the same server, idle,
in the same run. Sizes: ``--items`` scales every payload (default ~0.4-1.1 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.servers import ROOT, free_port, running

PROBE_EVERY_S = 0.005
TARGET_MS = 100.0


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


NUMBER_TREE = {"$defs": {"n": {"anyOf": [{"type": "integer"}, {
    "type": "array", "items": {"$ref": "#/$defs/n"}}]}}, "$ref": "#/$defs/n"}

# name: (inport schema, the payload of connection i for a size of n items)
CASES: dict[str, tuple[dict[str, Any], Callable[[int, int], Any]]] = {
    # refused: jsonschema's error pass names every unexpected key
    "unevaluated_keys": ({"type": "object", "properties": {"a": {}},
                          "unevaluatedProperties": False},
                         lambda i, n: {f"k{i}_{j}": j for j in range(2 * n)}),
    # refused: the last float repeats the first
    "unique_floats": ({"type": "array", "uniqueItems": True},
                      lambda i, n: [j + 0.5 for j in range(n)] + [0.5]),
    # valid: 2,000 distinct arrays nested 200 deep (n / 15 of them)
    "unique_nested": ({"type": "array", "uniqueItems": True},
                      lambda i, n: [_nested(200, i * n + j) for j in range(n // 15)]),
    # refused: a string deep inside a recursive anyOf
    "recursive_anyof": (NUMBER_TREE, lambda i, n: [[j, [j, [j, "x"]]] for j in range(n)]),
    # refused: 4,000-digit integers (n / 100 of them), each written in quadratic time, the
    # interpreter held; the first is not a multiple of 7
    "big_integers": ({"type": "array", "items": {"type": "integer", "multipleOf": 7}},
                     lambda i, n: [int("9" * 3998) * 7 + 7 * j + (j == 0)
                                   for j in range(n // 100)]),
}

PROBER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
while True:
    started = time.monotonic()
    try:
        urllib.request.urlopen(url, timeout=30).read()
        print(f"{(time.monotonic() - started) * 1000:.2f}", flush=True)
    except OSError as exc:
        print(f"error {exc}", flush=True)
    time.sleep(every)
"""


def write_actors(root: Path) -> Path:
    """One actor per case, its inport the case's schema, its script returning at once."""
    for name, (schema, _) in CASES.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "sink.py").write_text("async def process(context):\n    return {}\n")
        (folder / f"{name}.yaml").write_text(json.dumps({
            "id": name, "description": "a costly inport", "language": "python",
            "script": "sink.py", "inports": {"input": {"description": "costly",
                                                      "schema": schema}},
            "limits": {"timeout_s": 30}}))
    return root


def write_settings(folder: Path, actors: Path, port: int) -> Path:
    settings = folder / "settings.toml"
    settings.write_text(
        f'[default]\nhost = "127.0.0.1"\nport = {port}\nbackend = "process"\n'
        f"manifest_paths = [{json.dumps(str(actors))}]\n"
        f"allowed_roots = [{json.dumps(str(actors))}]\n"
        f"schema_roots = [{json.dumps(str(ROOT / 'schemas'))}]\n"
        "max_message_bytes = 4194304\nlog_level = \"warning\"\n")
    return settings


class Prober:
    """The prober process: /healthz every PROBE_EVERY_S; each answer's milliseconds."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Prober:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBER, self.url, str(PROBE_EVERY_S),
            stdout=asyncio.subprocess.PIPE)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()

    async def stop(self) -> list[float]:
        """Stop it: the probes' milliseconds (a failed probe counts as infinite)."""
        assert self.process is not None and self.process.stdout is not None
        self.process.terminate()
        out = await self.process.stdout.read()
        await self.process.wait()
        return [float(line) if not line.startswith(b"error") else float("inf")
                for line in out.splitlines()]


def _dumps(message: Any) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(message, separators=(",", ":")).encode()


async def call(url: str, frame: bytes) -> str:
    """One `process` call; ``ok`` or the error's code and first message."""
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_bytes(frame)
        answer = orjson.loads((await ws.receive()).data)
    error = answer.get("error")
    if error is None:
        return "ok"
    errors = (error.get("data") or {}).get("errors") or [{}]
    message = str(errors[0].get("message", error.get("message")))
    return f"{error['code']} {'did not finish' if 'did not finish' in message else 'refused'}"


async def probe_idle(port: int, seconds: float) -> list[float]:
    async with Prober(port) as prober:
        await asyncio.sleep(seconds)
        return await prober.stop()


async def probe_case(port: int, name: str, items: int, connections: int,
                     rounds: int) -> dict[str, Any]:
    make = CASES[name][1]
    frames = [_dumps({"jsonrpc": "2.0", "id": i, "method": "process", "params": {
        "actor_id": name, "payload": {"input": make(i, items)}}}) for i in range(connections)]
    url = f"ws://127.0.0.1:{port}/"
    worst: list[float] = []
    outcomes: Counter[str] = Counter()
    for _ in range(rounds):
        async with Prober(port) as prober:
            await asyncio.sleep(0.2)  # probing before the frames go
            outcomes.update(await asyncio.gather(*(call(url, frame) for frame in frames)))
            await asyncio.sleep(0.1)
            worst.append(max(await prober.stop()))
    return {"case": name, "mb": len(frames[0]) / 1e6, "worst_ms": worst,
            "outcomes": dict(outcomes)}


async def run(items: int, connections: int, rounds: int, cases: Sequence[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        port = free_port()
        settings = write_settings(Path(tmp), write_actors(Path(tmp) / "actors"), port)
        command = [sys.executable, "-m", "service", "--config", str(settings)]
        async with running(command, port, "stall"):
            idle = await probe_idle(port, 1.0)
            print(f"/healthz, idle: p50 {statistics.median(idle):.1f} ms, "
                  f"max {max(idle):.1f} ms ({len(idle)} probes); target under load: "
                  f"max < {TARGET_MS:g} ms", flush=True)
            met = True
            for name in cases:
                found = await probe_case(port, name, items, connections, rounds)
                worst = " / ".join(f"{ms:.0f}" for ms in found["worst_ms"])
                met &= max(found["worst_ms"]) < TARGET_MS
                outcomes = ", ".join(f"{count} {what}" for what, count in
                                     sorted(found["outcomes"].items()))
                print(f"{name:17s} {found['mb']:.2f} MB x {connections}: /healthz max "
                      f"{worst} ms; calls: {outcomes}", flush=True)
    print(f"target {'met' if met else 'NOT met'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stall",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30_000,
                        help="payload size knob: items per payload (default 30000)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"some of: {', '.join(CASES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    return asyncio.run(run(args.items, args.connections, args.rounds, args.cases or list(CASES)))


if __name__ == "__main__":
    raise SystemExit(main())
