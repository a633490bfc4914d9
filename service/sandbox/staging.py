"""Readable copies of what a process sandbox mounts: actor folders and harnesses.

A sandbox runs as an unprivileged host uid (``uids.py``), which may not be able to read
the actor's folder where it lies (a checkout below a 0700 home, a 0600 file) and must
never be root to get around that. A tree any uid can read (every directory above it
o+x, every directory in it o+rx, every file o+r) is mounted as it is, live. Any other is
staged: the server, which can read it, copies it into its own runtime directory:
directories 0755, files 0644 (0755 when executable), symlinks kept as symlinks (never
followed: a link to a host secret stays a dangling link inside), anything else
(sockets, fifos, devices) left out. The runtime directory
is 0711: a sandbox uid can reach a staged tree by its name, not list its neighbours.

A tree is staged once per content: its fingerprint (names, types, sizes, modes, mtimes)
names the copy, so an edited folder gets a new copy at the next boot, while running
sandboxes keep the one they mounted. Copies live until the backend closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "actor-sandbox-"


class Stager:
    """The runtime directory of one backend and the copies staged in it."""

    def __init__(self) -> None:
        self._dir: Path | None = None

    @property
    def directory(self) -> Path:
        """The runtime directory (made on first use, mode 0711)."""
        if self._dir is None:
            sweep_stale_dirs()
            self._dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
            self._dir.chmod(0o711)
        return self._dir

    def readable(self, source: Path) -> Path:
        """``source`` itself when any uid can read all of it, else a staged copy."""
        entries = _walk(source)
        if _reachable(source) and all(_readable(path) for path in entries):
            return source
        return self.stage(source, entries)

    def stage(self, source: Path, entries: list[Path] | None = None) -> Path:
        """A copy of the file or folder ``source`` that any uid can read, by content."""
        digest = fingerprint(source, entries)
        target = self.directory / f"{digest}-{source.name}"
        if not target.exists():
            partial = self.directory / f".partial-{digest}-{os.getpid()}"
            _remove(partial)
            copy_readable(source, partial)
            partial.rename(target)
            logger.debug("staged %s as %s", source, target)
        return target

    def close(self) -> None:
        if self._dir is not None:
            _remove(self._dir)
            self._dir = None


def fingerprint(source: Path, entries: list[Path] | None = None) -> str:
    """A digest of a tree's names, types, sizes, modes and modification times."""
    digest = hashlib.sha256(str(source).encode())
    for path in _walk(source) if entries is None else entries:
        info = path.lstat()
        digest.update(f"{path.relative_to(source)}\0{info.st_mode}\0{info.st_size}\0"
                      f"{info.st_mtime_ns}\0{info.st_ino}\n".encode())
    return digest.hexdigest()[:24]


def _walk(source: Path) -> list[Path]:
    if not source.is_dir() or source.is_symlink():
        return [source]
    found = [source]
    for root, dirs, files in os.walk(source, followlinks=False):
        dirs.sort()
        found += [Path(root, name) for name in sorted(dirs + files)]
    return found


def _reachable(source: Path) -> bool:
    """May any uid traverse every directory above ``source``?"""
    try:
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in source.parents)
    except OSError:
        return False


def _readable(path: Path) -> bool:
    """May any uid read ``path`` (and list a directory)? Symlinks: their targets count."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    if stat.S_ISLNK(mode):
        return True
    needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & needed == needed


def copy_readable(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with permissions any uid can read (see the module)."""
    info = source.lstat()
    if stat.S_ISLNK(info.st_mode):
        target.symlink_to(os.readlink(source))
    elif stat.S_ISREG(info.st_mode):
        shutil.copyfile(source, target, follow_symlinks=False)
        target.chmod(0o755 if info.st_mode & 0o111 else 0o644)
    elif stat.S_ISDIR(info.st_mode):
        target.mkdir(mode=0o755)
        target.chmod(0o755)
        for child in sorted(source.iterdir()):
            copy_readable(child, target / child.name)


def sweep_stale_dirs() -> int:
    """Remove the runtime directories of servers that died without closing them."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        creator = path.name.removeprefix(PREFIX).split("-")[0]
        if not creator.isdigit() or Path(f"/proc/{creator}").exists():
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
                _remove(path)
                removed += 1
    return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
