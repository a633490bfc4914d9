"""The Python harness with its bytecode compiled once, not at every sandbox's boot.

Python compiles a script it runs every time (the harness: ~6 ms of a fresh sandbox's
~20 ms start) but reads a module's bytecode from its __pycache__. So the process backend
builds, once, a folder that it mounts read-only at /harness:

    harness.py                                  boot.py: runs the module's bytecode as __main__
    lib/actor_harness.py                        harness.py, copied
    lib/__pycache__/actor_harness.<tag>.pyc     compiled by the sandbox's own interpreter

The interpreter checks the .pyc as it always does (magic number, the source's size and
mtime): one that does not match is ignored and the source compiled, as before. Nothing in
the sandbox can write there (a read-only mount, ``python -B``); on the host the folder is
the server's, in its runtime directory. It is rebuilt when harness.py changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

MODULE = "actor_harness"
COMPILE_TIMEOUT_S = 30.0
COMPILE = ("import py_compile, sys; "
           "py_compile.compile(sys.argv[1], dfile=sys.argv[2], doraise=True)")


class CompiledHarness:
    """Builds the folder (on first use, and again when the harness changes)."""

    def __init__(self, python: str, source: Path, bootstrap: Path) -> None:
        self._python = python
        self._source = source
        self._bootstrap = bootstrap
        self._built: tuple[tuple[int, int], Path | None] | None = None
        self._lock = asyncio.Lock()

    async def folder(self, parent: Path) -> Path | None:
        """The folder to mount at /harness, in ``parent``; None when it cannot be built
        (the plain harness.py is mounted then)."""
        try:
            stamp = _stamp(self._source)
        except OSError as exc:
            logger.warning("the Python harness is compiled at every boot: %s", exc)
            return None
        async with self._lock:
            built = self._built
            if built is None or built[0] != stamp or (built[1] and not built[1].is_dir()):
                built = self._built = (stamp, await self._build(parent, stamp))
            return built[1]

    async def _build(self, parent: Path, stamp: tuple[int, int]) -> Path | None:
        folder = parent / f"python-harness-{stamp[0]}-{stamp[1]}"
        lib = folder / "lib"
        try:
            shutil.rmtree(folder, ignore_errors=True)
            lib.mkdir(parents=True)
            shutil.copyfile(self._bootstrap, folder / "harness.py")
            shutil.copyfile(self._source, lib / f"{MODULE}.py")
            process = await asyncio.create_subprocess_exec(
                self._python, "-I", "-c", COMPILE, str(lib / f"{MODULE}.py"),
                f"/harness/lib/{MODULE}.py", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            async with asyncio.timeout(COMPILE_TIMEOUT_S):
                _, err = await process.communicate()
            if process.returncode != 0:
                raise OSError(err.decode("utf-8", "replace").strip()[-500:])
            _make_readable(folder)
        except (OSError, TimeoutError) as exc:
            logger.warning("the Python harness is compiled at every boot: cannot build its "
                           "bytecode with %s: %s", self._python, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return folder


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _make_readable(top: Path) -> None:
    """Directories 0755, files 0644: any sandbox uid reads them, none changes them."""
    for directory, _, files in os.walk(top):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
