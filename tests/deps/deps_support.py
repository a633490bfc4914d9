"""Helpers of the dependency tests: actor folders written on the fly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.runtime import Runtime
from service.settings import Settings

RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]
REPO = Path(__file__).resolve().parents[2]

PY_VERSION_ACTOR = """\
import os
import six


async def process(context):
    others = sorted(os.listdir("/deps"))
    await context.send_output("out", {"version": six.__version__, "file": six.__file__,
                                      "deps": others})
    return None
"""


def write_actor(folder: Path, actor_id: str, dependencies: str, source: str = PY_VERSION_ACTOR,
                language: str = "python") -> Path:
    """A manifest (``dependencies`` is its YAML block, indented) and script; the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f"{actor_id}.py" if language == "python" else f"{actor_id}.js"
    (folder / script).write_text(textwrap.dedent(source))
    manifest = folder / f"{actor_id}.yaml"
    manifest.write_text(
        f"id: {actor_id}\n"
        f"language: {language}\n"
        f"script: {script}\n"
        f"{textwrap.dedent(dependencies)}"
        "outports:\n"
        "  out:\n"
        "    schema: true\n")
    return manifest


def service(*args: str, deps_dir: Path, prefix: tuple[str, ...] = (),
            **env_vars: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a subprocess, on the cache ``deps_dir``."""
    env = {**os.environ, "SERVICE_DEPS_DIR": str(deps_dir), **env_vars}
    return subprocess.run([*prefix, sys.executable, "-m", "service", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
