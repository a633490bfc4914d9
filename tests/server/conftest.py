"""Fixtures: the real server (create_app) on a real runtime and the process sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from server_support import ACTORS, MANIFESTS, Rpc, RuntimeFactory, ServerFactory

from service.runtime import Runtime
from service.sandbox.process import ProcessBackend
from service.server import create_app
from service.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(manifest_paths=(MANIFESTS, ACTORS),
                    allowed_roots=(MANIFESTS, ACTORS, tmp_path), backend="process")


@pytest.fixture
async def make_runtime() -> AsyncIterator[RuntimeFactory]:
    """Build started runtimes on the process backend; all closed after the test."""
    made: list[Runtime] = []

    async def make(settings: Settings) -> Runtime:
        runtime = Runtime(settings, ProcessBackend(settings))
        made.append(runtime)
        await runtime.start()
        return runtime

    yield make
    await asyncio.gather(*(r.aclose() for r in made))


@pytest.fixture
async def runtime(make_runtime: RuntimeFactory, settings: Settings) -> Runtime:
    return await make_runtime(settings)


@pytest.fixture
def make_server(aiohttp_client: Any, settings: Settings,
                make_runtime: RuntimeFactory) -> ServerFactory:
    """A real app on a real runtime; ``make_server(**settings_changes)``."""

    async def make(runtime: Runtime | None = None, **changes: Any) -> TestClient:
        s = settings.replace(**changes)
        rt = runtime if runtime is not None else await make_runtime(s)
        client: TestClient = await aiohttp_client(create_app(s, rt, validate_results=True))
        return client

    return make


@pytest.fixture
async def server(make_server: ServerFactory, runtime: Runtime) -> TestClient:
    return await make_server(runtime)


@pytest.fixture
async def rpc(server: TestClient) -> AsyncIterator[Rpc]:
    ws = await server.ws_connect("/")
    yield Rpc(ws)
    await ws.close()


