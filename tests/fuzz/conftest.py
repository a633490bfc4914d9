"""Fixtures of the protocol fuzz: the live server on the process sandbox, and a confined `load`.

``load`` may read only below ``fuzz_root`` (the one allowed root). Next to it, in a folder
of its own, ``outside`` holds files with a secret in them; links, traversals and manifests
in the root point there, and no message may ever carry the secret.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fuzz_oracle import REPO, ActorModel, World, doubler_model, example_actors
from fuzz_wire import Wire

from service.runtime import Runtime
from service.sandbox.process import ProcessBackend
from service.server import create_app
from service.settings import Settings

MANIFESTS = REPO / "manifests"


def _manifest(actor_id: str, script: str, extra: str = "", schema: str = "{type: number}") -> str:
    return (f"id: {actor_id}\nlanguage: python\nscript: {script}\n"
            f"inports: {{input: {{schema: {schema}}}}}\n"
            "outports: {output: {schema: {type: number}}}\n" + extra)


@pytest.fixture
def secret() -> str:
    return f"FUZZ-SECRET-{secrets.token_hex(8)}"


@pytest.fixture
def outside(tmp_path: Path, secret: str) -> Path:
    """Files `load` must never read: a valid actor, a script and a schema, with the secret."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.py").write_text(f"# {secret}\nasync def process(context):\n    return 1\n")
    (folder / "secret.yaml").write_text(
        _manifest("secret_actor", "secret.py", f"description: {secret}\n"))
    (folder / "secret.json").write_text(f'{{"type": "number", "title": "{secret}"}}\n')
    return folder


@pytest.fixture
def fuzz_root(tmp_path: Path, outside: Path) -> Path:
    """The only allowed root: good and broken manifests, and links that lead outside."""
    root = tmp_path / "root"
    for name in ("good", "broken", "links", "known_bugs"):
        (root / name).mkdir(parents=True)
    good, broken, links, bugs = (root / f for f in ("good", "broken", "links", "known_bugs"))
    for folder in (good, broken, bugs):
        shutil.copy(MANIFESTS / "doubler" / "doubler.py", folder / "fuzz_doubler.py")
    (good / "fuzz_doubler.yaml").write_text(_manifest("fuzz_doubler", "fuzz_doubler.py"))
    (good / "fuzz_twin.yml").write_text(_manifest("fuzz_twin", "fuzz_doubler.py"))
    (broken / "syntax.yaml").write_text("id: fuzz_syntax\nlanguage: [python\n")
    (broken / "unknown_key.yaml").write_text(_manifest("fuzz_unknown", "fuzz_doubler.py",
                                                       "timeout: 5\n"))
    (broken / "escape.yaml").write_text(
        _manifest("fuzz_escape", os.path.relpath(outside / "secret.py", broken)))
    (broken / "absolute.yaml").write_text(_manifest("fuzz_absolute", str(outside / "secret.py")))
    (broken / "linked.py").symlink_to(outside / "secret.py")
    (broken / "linked.yaml").write_text(_manifest("fuzz_linked", "linked.py"))
    (broken / "no_process.py").write_text("def run(context):\n    return 1\n")
    (broken / "no_process.yaml").write_text(_manifest("fuzz_no_process", "no_process.py"))
    (links / "manifest_out.yaml").symlink_to(outside / "secret.yaml")
    (links / "dir_out").symlink_to(outside, target_is_directory=True)
    (links / "loop.yaml").symlink_to(links / "loop.yaml")
    (root / "notes.txt").write_text("not a manifest\n")
    # A $ref out of the allowed root (pinned by test_ref_outside_the_root_is_refused).
    ref = os.path.relpath(outside / "secret.json", bugs)
    (bugs / "ref_out.yaml").write_text(
        _manifest("fuzz_ref_out", "fuzz_doubler.py", schema=f"{{$ref: {ref}}}"))
    return root


@pytest.fixture
def world(fuzz_root: Path, secret: str) -> World:
    resolved: dict[Path, ActorModel | None] = {
        p.resolve(): None for p in fuzz_root.rglob("*") if p.is_file()}
    good = fuzz_root.resolve() / "good"
    resolved[good / "fuzz_doubler.yaml"] = doubler_model("fuzz_doubler")
    resolved[good / "fuzz_twin.yml"] = doubler_model("fuzz_twin")
    return World(example_actors(), fuzz_root, resolved, (secret,))


@pytest.fixture
def fuzz_settings(fuzz_root: Path) -> Settings:
    return Settings(manifest_paths=(MANIFESTS,), allowed_roots=(fuzz_root,), backend="process")


@pytest.fixture
async def fuzz_runtime(fuzz_settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime(fuzz_settings, ProcessBackend(fuzz_settings))
    await runtime.start()
    yield runtime
    await runtime.aclose()


@pytest.fixture
async def fuzz_client(aiohttp_client: Any, fuzz_settings: Settings,
                      fuzz_runtime: Runtime) -> TestClient:
    """The real app; results are checked against their OpenRPC schemas (-32603 if not)."""
    client: TestClient = await aiohttp_client(
        create_app(fuzz_settings, fuzz_runtime, validate_results=True))
    return client


@pytest.fixture
async def wire(fuzz_client: TestClient, world: World) -> AsyncIterator[Wire]:
    """A fuzzing connection; at the end the server must still answer, on a new one too."""
    ws = await fuzz_client.ws_connect("/")
    fuzz = Wire(fuzz_client, ws, world)
    yield fuzz
    await fuzz.assert_alive()
    await ws.close()
    fresh = Wire(fuzz_client, await fuzz_client.ws_connect("/"), world)
    await fresh.assert_alive()
    await fresh.ws.close()
    await asyncio.sleep(0)
