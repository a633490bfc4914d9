"""Fixtures of the hostile suite: backends, a tmp copy of the corpus, host-side bystanders."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import backend_choice
import pytest
from hostile_support import (
    BACKENDS,
    CANARY_NAME,
    HERE,
    Listener,
    hostile_settings,
    make_backend,
    probe,
)

from service.sandbox.base import Backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend_name`` by ``--backend`` (tests/conftest.py)."""
    backend_choice.parametrize(metafunc, BACKENDS)


@pytest.fixture(scope="session")
def availability() -> dict[str, tuple[bool, str]]:
    """Each backend's availability, probed once per session (the microVM probe is slow)."""
    return {}


def _copy_corpus(root: Path) -> Path:
    for language in ("py", "js"):
        shutil.copytree(HERE / language, root / language, symlinks=True)
    return root


@pytest.fixture(scope="session")
def corpus() -> Iterator[Path]:
    """A world-readable tmp copy of the corpus, as a deployment's actor folder is.

    Cases plant symlinks in it, and it is the only allowed root. The process backend
    then runs bubblewrap as host uid 65534.
    """
    root = Path(tempfile.mkdtemp(prefix="hostile-corpus-"))
    root.chmod(0o755)
    yield _copy_corpus(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy only root can read (below pytest's 0700 tmp folder).

    The process backend then runs bubblewrap as host root, mapped to 65534 inside: the
    privilege-sensitive rows run in this mode too.
    """
    return _copy_corpus(tmp_path_factory.mktemp("hostile-corpus-private"))


@pytest.fixture(scope="session")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host files outside the corpus: a secret, and a valid actor script to link to."""
    root = tmp_path_factory.mktemp("hostile-outside")
    (root / "secret.txt").write_text(f"host secret {uuid.uuid4()}\n")
    (root / "evil.py").write_text("def process(context):\n    return {'escaped': True}\n")
    return root


@pytest.fixture
async def backend(backend_name: str, corpus: Path,
                  availability: dict[str, tuple[bool, str]]) -> Backend:
    """A fresh backend of the parametrized kind; skips, saying why, when it is unavailable here."""
    settings = hostile_settings(corpus)
    if backend_name not in availability:
        availability[backend_name] = await probe(backend_name, settings)
    ok, reason = availability[backend_name]
    if not ok:
        pytest.skip(f"backend {backend_name} unavailable here: {reason}")
    return make_backend(backend_name, settings)


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    """An environment variable of the server process that no sandbox may see."""
    value = f"canary-{uuid.uuid4()}"
    monkeypatch.setenv(CANARY_NAME, value)
    return value


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A host process of the same user that no sandbox may kill."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """Listeners on the host (loopback TCP, abstract unix socket) that no sandbox may reach."""
    state = Listener()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    state.abstract = f"hostile-{uuid.uuid4().hex}"
    unix = await asyncio.start_unix_server(accept, "\0" + state.abstract)
    async with server, unix:
        yield state
