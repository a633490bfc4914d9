"""Readable copies of the folders a sandbox reads, whatever the modes of the originals.

A sandbox's user is never the owner of the host files it reads: bubblewrap runs it as an
unprivileged host uid, and a microVM's virtio-fs mounts show the guest the host's owner
and mode bits. An actor folder under a 0700 directory (a checkout in /root, a test's
temporary folder) would then be unreadable inside. The server, which can read it, copies
it once per worker into a folder every user may read but nobody but root may change:
directories 0755, files 0644 (0755 when the original is executable). Devices, FIFOs
and sockets are not copied.

Symbolic links are copied as links, never followed: following one would copy whatever
host file it names into the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path


class Staged:
    """A staged set of folders under one root; removed with :meth:`remove`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def remove(self) -> None:
        """Delete the copies; idempotent, never raises."""
        shutil.rmtree(self.root, ignore_errors=True)


def stage(sources: Mapping[str, Path], parent: Path | None = None) -> Staged:
    """Copy each ``sources[name]`` folder to ``ROOT/name``, readable by every user."""
    root = Path(tempfile.mkdtemp(prefix="svc-stage-", dir=parent))
    staged = Staged(root)
    try:
        os.chmod(root, 0o755)
        for name, source in sources.items():
            shutil.copytree(source, root / name, symlinks=True, ignore=_special_files)
            _make_readable(root / name)
    except BaseException:
        staged.remove()
        raise
    return staged


def _special_files(folder: str, names: list[str]) -> set[str]:
    """Devices, FIFOs and sockets are left out: reading one could block or never end."""
    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def _make_readable(top: Path) -> None:
    os.chmod(top, 0o755)
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            with contextlib.suppress(FileNotFoundError):
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)
