"""Readable copies of the folders a sandbox reads, whatever the modes of the originals.

A sandbox's user is never the owner of the host files it reads: bubblewrap runs it as an
unprivileged host uid of its own (``uids.py``; never root), and a microVM's virtio-fs
mounts show the guest the host's owner and mode bits. An actor folder under a 0700
directory (a checkout in /root, a test's temporary folder) would then be unreadable
inside. The server, which can read it, copies it into a folder every user may read but
nobody but root may change: directories 0755, files 0644 (0755 when the original is
executable). Devices, FIFOs and sockets are not copied.

Symbolic links are copied as links, never followed: following one would copy whatever
host file it names into the sandbox.

Two ways to use it: :func:`stage` copies folders once per worker (the microVM backend);
a :class:`Stager` (the process backend) mounts a tree any uid can read as it is (every
directory above it o+x, every directory in it o+rx, every file o+r: live, nothing
copied) and stages any other once per content: the tree's fingerprint (names, types,
sizes, modes, mtimes) names the copy, so an edited folder gets a new copy at the next
boot while running sandboxes keep the one they mounted. A Stager's copies live in its
runtime directory (0711: a sandbox uid can reach a copy by its name, not list its
neighbours) until the backend closes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "actor-sandbox-"
OWNER_LOCK = ".owner"  # in a folder of Staged.owned: locked by its process while it runs
UNLOCKED_GRACE_S = 60


class Stager:
    """The runtime directory of one backend and the copies staged in it."""

    def __init__(self) -> None:
        self._dir: Staged | None = None
        self._immutable: dict[Path, Path] = {}  # verdicts on trees that never change

    @property
    def directory(self) -> Path:
        """The runtime directory (made on first use, mode 0711)."""
        if self._dir is None:
            sweep_stale_dirs()
            self._dir = Staged.owned(PREFIX)
            self._dir.root.chmod(0o711)
        return self._dir.root

    def readable(self, source: Path, immutable: bool = False) -> Path:
        """``source`` itself when any uid can read all of it, else a staged copy.
        ``immutable``: the tree never changes (a built dependency set), so it is walked
        once, not at every boot."""
        if immutable and source in self._immutable:
            return self._immutable[source]
        entries = _walk(source)
        if _reachable(source) and all(_readable(path) for path in entries):
            verdict = source
        else:
            verdict = self.stage(source, entries)
        if immutable:
            self._immutable[source] = verdict
        return verdict

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
            self._dir.remove()
            self._dir = None
        self._immutable.clear()


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
    """Copy the file or folder ``source`` to ``target``, readable by every user."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, ignore=_special_files)
        _make_readable(target)
    else:
        shutil.copyfile(source, target, follow_symlinks=False)
        target.chmod(0o755 if source.lstat().st_mode & 0o111 else 0o644)


def sweep_stale_dirs() -> int:
    """Remove the runtime directories of servers that died without closing them."""
    return sweep_abandoned(PREFIX)


def sweep_abandoned(prefix: str) -> int:
    """Remove the folders named ``prefix``... in the temporary folder that this uid's
    processes made (Staged.owned) and left when they ended."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() \
                    and path.stat().st_uid == os.geteuid() and _abandoned(path, prefix):
                _remove(path)
                removed += 1
    return removed


def _abandoned(path: Path, prefix: str) -> bool:
    """Has the process that made ``path`` ended? Then nobody holds its lock, whatever pid
    namespace it ran in: a server in a container or under ``unshare --pid`` is pid 1, and
    "/proc/1 exists" kept every folder such servers left. A folder with no lock file is
    older than locks or not locked yet: its creator's pid decides, once it is a minute old."""
    try:
        fd = os.open(path / OWNER_LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        creator = path.name.removeprefix(prefix).split("-")[0]
        return creator.isdigit() and not Path(f"/proc/{creator}").exists() \
            and time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


class Staged:
    """A staged set of folders under one root; removed with :meth:`remove`."""

    def __init__(self, root: Path, lock: int | None = None) -> None:
        self.root = root
        self._lock = lock

    @classmethod
    def owned(cls, prefix: str, tag: str = "") -> Staged:
        """A new folder ``prefix<pid>-<tag>...`` in the temporary folder, locked by this
        process for as long as it runs (flock on OWNER_LOCK, closed on exec): sweepers
        (sweep_abandoned) leave it alone until it is removed or the process has ended."""
        root = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{tag}"))
        # Locked under another name, then named: a sweeper never finds OWNER_LOCK unlocked.
        pending = root / f"{OWNER_LOCK}.new"
        lock = os.open(pending, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        pending.rename(root / OWNER_LOCK)
        return cls(root, lock)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def remove(self) -> None:
        """Delete the copies; idempotent, never raises."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


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
