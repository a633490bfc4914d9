"""Warm calls doing one persistent-state ``increment``: on the embedded store (the server
under test) and on Redis (a second server whose ``state.redis_url`` is a redis-server this
module starts on a unix socket). Skipped, and said so, when redis-server is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import servers
from bench.load import CallSpec, run_calls

log = logging.getLogger(__name__)

STATE_ACTOR = "state_counter"
STATE = {"namespace": "bench", "actor_id": STATE_ACTOR}
REDIS_START_TIMEOUT_S = 10.0


async def measure(server: servers.Running, config: Path, backend: str, calls: int,
                  warmup_calls: int) -> dict[str, Any]:
    """``{"embedded": summary, "redis": summary or None}``."""
    out: dict[str, Any] = {"embedded": await _sequential(server, calls, warmup_calls)}
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        log.warning("redis-server not installed: no Redis state row")
        out["redis"] = None
        return out
    port = servers.free_port()
    async with _redis(redis_server) as url, servers.running(
            servers.server_command(port, config, backend), port, "server-redis",
            env={"SERVICE_STATE__REDIS_URL": url}) as redis_backed:
        out["redis"] = await _sequential(redis_backed, calls, warmup_calls)
    return out


async def _sequential(server: servers.Running, calls: int, warmup_calls: int) -> dict[str, Any]:
    stats = await run_calls(server.url, STATE_ACTOR, connections=1, calls=calls,
                            warmup_calls=warmup_calls, server_pid=server.pid,
                            call=CallSpec(state=STATE))
    return stats.summary()


@contextlib.asynccontextmanager
async def _redis(program: str) -> AsyncIterator[str]:
    """A throwaway redis-server on a unix socket (no persistence); its URL."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        sock = Path(folder, "redis.sock")
        process = await asyncio.create_subprocess_exec(
            program, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", folder,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            async with asyncio.timeout(REDIS_START_TIMEOUT_S):
                while not sock.exists():
                    await asyncio.sleep(0.02)
            yield f"unix://{sock}"
        finally:
            process.terminate()
            await process.wait()
