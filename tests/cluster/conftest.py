"""Fixtures of the cluster tests: a real redis-server and service processes around it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ACTORS, REPO, RedisServer, Service, free_port, write_config

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (scripts/setup.sh installs it)",
                allow_module_level=True)


class Cluster:
    """Fronts and workers of one test on one Redis; every process is stopped afterwards."""

    def __init__(self, redis: RedisServer, tmp: Path) -> None:
        self.redis = redis
        self.tmp = tmp
        self.services: list[Service] = []
        self.redis_url: str | None = None  # instead of redis.url (e.g. TLS options)
        self.actors: tuple[Path, ...] = (ACTORS,)  # fewer actors: workers start faster

    def with_examples(self) -> None:
        """Workers serve the example manifests too."""
        self.actors = (REPO / "manifests", ACTORS)

    def _config(self, name: str, role: str, **cluster: Any) -> Path:
        url = cluster.pop("redis_url", None) or self.redis_url or self.redis.url
        return write_config(self.tmp / f"{name}.toml", url, role=role,
                            manifest_paths=self.actors,
                            allowed_roots=(*self.actors, self.tmp), **cluster)

    async def front(self, healthy: bool = True, **cluster: Any) -> Service:
        """A started front (``healthy``: wait until it reaches Redis, else until it listens)."""
        name = f"front{len(self.services)}"
        config = self._config(name, "front", **cluster)
        service = Service(name, ["--config", str(config)], free_port(), self.tmp / f"{name}.log")
        return await self._started(service, healthy)

    async def workers(self, count: int, **cluster: Any) -> list[Service]:
        """``count`` started workers (healthy: registered with Redis)."""
        made = []
        for _ in range(count):
            name = f"worker{len(self.services) + len(made)}"
            config = self._config(name, "worker", **cluster)
            made.append(Service(name, ["worker", "--config", str(config)], free_port(),
                                self.tmp / f"{name}.log"))
        return list(await asyncio.gather(*(self._started(s) for s in made)))

    async def _started(self, service: Service, healthy: bool = True) -> Service:
        self.services.append(service)
        await service.start()
        await service.wait_healthy(any_status=not healthy)
        return service

    async def aclose(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services))


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def cluster(redis: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(redis, tmp_path)
    yield made
    await made.aclose()
