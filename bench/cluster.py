"""The cluster's round trip: a throwaway redis-server, one front and one worker.

Measured in the same run as the single-machine server, one right after the other, so
that the difference of their latencies is the cost of the hop through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from bench import servers

LIVE_TIMEOUT_S = 60.0


def worker_command(port: int, config: Path, backend: str) -> list[str]:
    """A cluster worker on the example manifests plus the bench actors; health on ``port``."""
    return [sys.executable, "-m", "service", "worker", "--config", str(config), "--host",
            "127.0.0.1", "--port", str(port), "--backend", backend, "--actors",
            str(servers.BENCH_ACTORS)]


def cluster_env(redis_url: str, role: str) -> dict[str, str]:
    return {"SERVICE_CLUSTER__REDIS_URL": redis_url, "SERVICE_CLUSTER__ROLE": role}


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A redis-server without persistence on a free loopback port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise servers.ServerFailed("redis-server is not installed (scripts/setup.sh)")
    port = servers.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        process = await asyncio.create_subprocess_exec(
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await _wait_listening(port, process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            await process.wait()


async def _wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise servers.ServerFailed(f"redis-server exited with {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise servers.ServerFailed("redis-server did not start")


@contextlib.asynccontextmanager
async def running(config: Path, backend: str) -> AsyncIterator[servers.Running]:
    """Redis, a front and one worker; yields the front once it sees the worker."""
    front_port, worker_port = servers.free_port(), servers.free_port()
    async with redis_server() as url, \
            servers.running(worker_command(worker_port, config, backend), worker_port,
                            "worker", env=cluster_env(url, "worker")), \
            servers.running(servers.server_command(front_port, config, backend), front_port,
                            "front", env=cluster_env(url, "front")) as front:
        await _wait_live_worker(front_port)
        yield front


async def _wait_live_worker(port: int) -> None:
    deadline = time.monotonic() + LIVE_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                if (await response.json()).get("live_workers", 0) >= 1:
                    return
            await asyncio.sleep(0.1)
    raise servers.ServerFailed("the front never saw its worker")
