"""Fixtures of the sandbox contract suite.

``--backend`` (tests/conftest.py) picks the backends the contract tests run against
(default: process,gvisor; microvm-local is the microVM backend on the recording SDK
double). A backend that cannot run here is skipped with the reason its
``availability()`` gives.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import backend_choice
import pytest
from microvm_double import LocalSDK
from sandbox_helpers import ACTORS, TMP_MB, actor_def

from service.manifest.model import ActorDef
from service.sandbox.base import Availability, Backend, Worker
from service.sandbox.microvm import MicroVMBackend
from service.sandbox.process import ProcessBackend
from service.settings import SandboxSettings, Settings

# microvm-local: the microVM backend's whole boot and call path on the recording SDK
# double (tests/sandbox/microvm_double.py); docs/backends.md lists where its contract
# results differ from the process backend's by design.
BACKENDS = ("process", "gvisor", "microvm", "microvm-local")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backend_choice.parametrize(metafunc, BACKENDS)


class LocalMicroVMBackend(MicroVMBackend):
    """The microVM backend, unchanged, on the recording SDK double: available wherever
    bubblewrap and cgroups are."""

    name = "microvm"

    async def availability(self) -> Availability:
        return Availability("microvm", True, details={"sdk": "recording double"})


def make_backend(name: str, settings: Settings,
                 monkeypatch: pytest.MonkeyPatch | None = None) -> Backend:
    """The backend called ``name``; skips the test when its module is not there."""
    if name == "process":
        from service.sandbox.process import ProcessBackend

        return ProcessBackend(settings)
    if name == "gvisor":
        from service.sandbox.gvisor import GVisorBackend

        return GVisorBackend(settings)
    if name == "microvm-local":
        assert monkeypatch is not None
        LocalSDK().install(monkeypatch)
        return LocalMicroVMBackend(settings)
    try:
        module = importlib.import_module("service.sandbox.microvm")
    except ImportError as exc:
        pytest.skip(f"microvm backend not importable: {exc}")
    backend: Backend = module.MicroVMBackend(settings)
    return backend


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(sandbox=SandboxSettings(tmp_mb=TMP_MB))


@pytest.fixture(scope="session")
def availability_seen() -> dict[str, Availability]:
    """Each backend's availability, checked once per session (a microVM probe is slow)."""
    return {}


@pytest.fixture
async def backend(backend_name: str, settings: Settings,
                  availability_seen: dict[str, Availability],
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    instance = make_backend(backend_name, settings, monkeypatch)
    if backend_name not in availability_seen:
        availability_seen[backend_name] = await instance.availability()
    available = availability_seen[backend_name]
    if not available.ok:
        await instance.aclose()
        pytest.skip(f"{backend_name} backend unavailable: {available.reason}")
    yield instance
    await instance.aclose()


@pytest.fixture
async def process_backend(settings: Settings) -> AsyncIterator[ProcessBackend]:
    backend = ProcessBackend(settings)
    available = await backend.availability()
    if not available.ok:
        pytest.skip(f"process backend unavailable: {available.reason}")
    yield backend
    await backend.aclose()


@pytest.fixture
def actor() -> Callable[..., ActorDef]:
    """``actor("hostile.py", timeout_s=1)``: an ActorDef for a script of tests/sandbox/actors."""
    return lambda name, **kwargs: actor_def(ACTORS / name, **kwargs)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A world-readable folder the test may write to while a sandbox reads it."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start(backend: Backend) -> AsyncIterator[Callable[[ActorDef], Awaitable[Worker]]]:
    """Boot workers; every one is closed at the end of the test."""
    workers: list[Worker] = []

    async def boot(actor: ActorDef) -> Worker:
        worker = await backend.start_worker(actor)
        workers.append(worker)
        return worker

    yield boot
    for worker in workers:
        await worker.close()
