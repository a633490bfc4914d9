"""Helpers of the dependency tests: actor folders written on the fly."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.runtime import Runtime
from service.settings import Settings

RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]

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
