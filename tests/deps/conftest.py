"""Fixtures: a dependency cache that every sandbox uid can reach, and runtimes on it.

These tests install real (tiny) packages from PyPI and npm: six (11 kB), python-dateutil
and is-number. The shared cache lives for the session, so each set downloads once.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from deps_support import RuntimeFactory

from service.runtime import Runtime
from service.sandbox.process import ProcessBackend
from service.settings import Settings


def reachable_dir(prefix: str) -> Path:
    """A 0755 folder in /tmp (pytest's own are 0700: uid 65534 could not reach inside)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def shared_deps_dir() -> Iterator[Path]:
    path = reachable_dir("deps-cache-")
    yield path / "deps"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_deps_dir() -> Iterator[Path]:
    """A cache of this test's own (for tests that damage it)."""
    path = reachable_dir("deps-own-")
    yield path / "deps"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def actors_dir() -> Iterator[Path]:
    path = reachable_dir("deps-actors-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def make_runtime() -> AsyncIterator[RuntimeFactory]:
    made: list[Runtime] = []

    async def make(settings: Settings) -> Runtime:
        runtime = Runtime(settings, ProcessBackend(settings))
        made.append(runtime)
        await runtime.start()
        return runtime

    yield make
    await asyncio.gather(*(r.aclose() for r in made))
