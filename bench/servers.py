"""The processes under test: the real server and the echo baseline, each a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

READY_TIMEOUT_S = 60.0  # the server boots nothing at start, but `auto` probes for microVMs
STOP_TIMEOUT_S = 15.0
ROOT = Path(__file__).resolve().parent.parent
BENCH_ACTORS = Path(__file__).resolve().parent / "actors"


class ServerFailed(RuntimeError):
    """A server did not come up (its log tail is in the message)."""


@dataclass(frozen=True)
class Running:
    """A server subprocess listening on loopback."""

    pid: int
    url: str
    log: Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(port: int, config: Path, backend: str) -> list[str]:
    """The real server on the example manifests plus the bench actors."""
    return [sys.executable, "-m", "service", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--backend", backend, "--actors", str(BENCH_ACTORS)]


def echo_command(port: int, busy_poll_us: int = 0, module: str = "bench.echo") -> list[str]:
    """The echo (or, with ``module="bench.pipe_floor"``, the echo plus a pipe round trip)."""
    return [sys.executable, "-m", module, "--port", str(port),
            "--busy-poll-us", str(busy_poll_us)]


@contextlib.asynccontextmanager
async def running(command: Sequence[str], port: int, name: str,
                  env: Mapping[str, str] | None = None) -> AsyncIterator[Running]:
    """Start ``command``, wait until GET /healthz answers 200, stop it (SIGTERM) at the end."""
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log",
                                     delete=False) as log_file:
        log = Path(log_file.name)
        # Output goes to a file, never a pipe: an unread pipe would stall the server's logging.
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, env=None if env is None else {**os.environ, **env})
    try:
        await _wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log)
        yield Running(process.pid, f"ws://127.0.0.1:{port}/", log)
    finally:
        await _stop(process)
    log.unlink(missing_ok=True)


async def _wait_healthy(process: asyncio.subprocess.Process, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise ServerFailed(f"{url}: exited with {process.returncode}: {_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise ServerFailed(f"{url}: not healthy after {READY_TIMEOUT_S:g} s: {_tail(log)}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"
