"""The dependency cache: one folder per (set, language, interpreter), sealed and verifiable.

Layout below ``settings.deps_dir``::

    python-<key>/lib/...            pip's --target output (put on sys.path)
    python-<key>/entry.json         what was built, and every file's mode and sha256
    javascript-<key>/node_modules/  npm's output (package.json and the lock beside it)
    .locks/<name>.lock              one builder per entry at a time, across processes
    .build-<name>-<random>/         an install in progress (renamed into place when sealed)

``key`` is a hash of the normalized set, the language and what of the interpreter
decides binary compatibility. An entry is *sealed* once built: owned by the builder
(root when the server runs as root), directories 0755 and files 0644 (0755 when
executable), so that every sandbox uid can read it and none can change it. ``verify``
compares the entry with its ``entry.json``: a missing, changed or extra file is a
corrupted entry, which the builder removes and builds again.

``entry.json`` tells accidental damage, not tampering: whoever can rewrite the files can
rewrite it too. The trust comes from ownership and modes, checked by ``check_root`` and
``check_entry`` each time an entry is used: deps_dir, the folders above it and every
file of the entry owned by this user or root and writable by no one else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.deps.spec import Dependencies

FORMAT = 1
MARKER = "entry.json"
PAYLOAD = {"python": "lib", "javascript": "node_modules"}  # what the sandbox mounts
KEY_CHARS = 32


class CacheError(Exception):
    """The cache itself cannot be used (unsafe folder, permissions)."""


def entry_key(deps: Dependencies, interpreter: dict[str, str]) -> str:
    """The content address of a set: the packages, the language and the interpreter's ABI."""
    identity = {"format": FORMAT, "language": deps.language, "packages": deps.describe(),
                "interpreter": interpreter}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def entry_name(deps: Dependencies, interpreter: dict[str, str]) -> str:
    return f"{deps.language}-{entry_key(deps, interpreter)}"


def payload_dir(entry: Path, language: str) -> Path:
    """The folder of an entry that the sandbox mounts read-only."""
    return entry / PAYLOAD[language]


def prepare_root(root: Path) -> None:
    """Create the cache folder (0755) and refuse one that others could write into."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    locks = root / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    check_root(root)
    _refuse(f"deps_dir lock folder {locks}", _untrusted(locks.lstat()))


def check_root(root: Path) -> None:
    """Refuse a deps_dir that another user could write into, or swap through a folder above
    it (a sticky folder such as /tmp may be shared: others cannot rename what is ours)."""
    for folder in (root, *root.parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue  # not created yet: prepare_root checks it once it is
        if folder == root:
            _refuse(f"deps_dir {root}", _untrusted(info))
        else:
            _refuse(f"deps_dir {root}: the folder above it, {folder},",
                    _untrusted(info, shared=bool(info.st_mode & stat.S_ISVTX)))


def check_entry(entry: Path) -> None:
    """Refuse an entry (or a build) that anyone but this user or root could have changed:
    every file and folder theirs and writable by no one else, no symlink leading out."""
    if not entry.exists() and not entry.is_symlink():
        return
    inside = Path(os.path.realpath(entry))
    for path in itertools.chain([entry], _walk(entry)):
        info = path.lstat()
        problem = _untrusted(info)
        if problem is None and stat.S_ISLNK(info.st_mode):
            problem = _leaves(path, entry, inside)
        where = "" if path == entry else f": {path.relative_to(entry).as_posix()}"
        _refuse(f"cache entry {entry}{where}", problem)


def _untrusted(info: os.stat_result, shared: bool = False) -> str | None:
    """Why another user could change this file (``shared``: a sticky folder may be 1777)."""
    if info.st_uid not in (os.geteuid(), 0):
        return f"belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}) or root"
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not shared and not stat.S_ISLNK(info.st_mode):  # a link's mode is moot
        return f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _leaves(link: Path, entry: Path, inside: Path) -> str | None:
    """Why the symlink ``link`` may lead out of ``entry`` (None when it stays inside)."""
    target = os.readlink(link)
    # Inside both as written (what a sandbox sees of its mount) and as resolved here.
    written = Path(os.path.normpath(link.parent / target))
    if link == entry or os.path.isabs(target) or not written.is_relative_to(entry) \
            or not Path(os.path.realpath(link)).is_relative_to(inside):
        return f"is a symlink to {target}, outside its entry"
    return None


def _refuse(subject: str, problem: str | None) -> None:
    if problem is not None:
        raise CacheError(f"{subject} {problem}: refused, since whoever can change it can plant "
                         "code in the sandboxes (fix its owner and mode, or remove it)")


@contextlib.contextmanager
def locked(root: Path, name: str) -> Iterator[None]:
    """Hold the entry's build lock (blocks while another process builds the same entry)."""
    fd = os.open(root / ".locks" / f"{name}.lock",
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def new_build_dir(root: Path, name: str) -> Path:
    """A fresh folder to install into, after removing what crashed builds left behind."""
    for stale in root.glob(f".build-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    path = root / f".build-{name}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    return path


def seal(build: Path, identity: dict[str, Any]) -> None:
    """Fix ownership and modes, then write the marker listing every file (written last)."""
    uid, gid = os.geteuid(), os.getegid()
    for path in _walk(build):
        os.chown(path, uid, gid, follow_symlinks=False)
        if not path.is_symlink():
            os.chmod(path, _sealed_mode(path.lstat().st_mode))
    os.chown(build, uid, gid)
    os.chmod(build, 0o755)
    marker = {**identity, "format": FORMAT, "files": files_of(build)}
    target = build / MARKER
    target.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(target, 0o644)


def install(build: Path, entry: Path) -> None:
    """Put a sealed build in place of ``entry`` (whatever was there is moved aside first)."""
    if entry.exists() or entry.is_symlink():
        discard(entry)
    os.rename(build, entry)


def discard(entry: Path) -> None:
    """Remove an entry: renamed away first, so nobody finds it half-deleted."""
    trash = entry.with_name(f".trash-{entry.name}-{secrets.token_hex(4)}")
    os.rename(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


def verify(entry: Path, name: str) -> str | None:
    """Why ``entry`` cannot be used as it stands (None when it is intact)."""
    if not entry.is_dir():
        return "no such entry"
    try:
        marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MARKER} is missing"
    except (OSError, ValueError) as exc:
        return f"{MARKER} is unreadable: {exc}"
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        return f"{MARKER} has an unknown format"
    if marker.get("name") != name:
        return f"{MARKER} describes {marker.get('name')!r}, not {name!r}"
    expected = marker.get("files")
    if not isinstance(expected, dict):
        return f"{MARKER} lists no files"
    return _difference(expected, files_of(entry))


def _difference(expected: dict[str, Any], actual: dict[str, str]) -> str | None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
    for what, paths in (("missing", missing), ("changed", changed), ("unexpected", extra)):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            return f"{what} file {paths[0]}{more}"
    return None


def files_of(entry: Path) -> dict[str, str]:
    """Every file of an entry but the marker: relative path -> "MODE UID sha256:HEX" (or
    "MODE UID dir", "link TARGET"). The entry folder itself is "."."""
    files = {".": _describe(entry)}
    for path in _walk(entry):
        relative = path.relative_to(entry).as_posix()
        if relative != MARKER:
            files[relative] = _describe(path)
    return files


def _describe(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return f"link {os.readlink(path)}"
    owner = f"{stat.S_IMODE(info.st_mode):o} {info.st_uid}"
    if stat.S_ISDIR(info.st_mode):
        return f"{owner} dir"
    if stat.S_ISREG(info.st_mode):
        return f"{owner} sha256:{_sha256(path)}"
    return f"{owner} special"  # never produced by an installer: always a mismatch


def _walk(top: Path) -> Iterator[Path]:
    """Everything below ``top``, without following symlinks."""
    for parent, dirs, names in os.walk(top):
        for name in (*dirs, *names):
            yield Path(parent, name)


def _sealed_mode(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return 0o755
    return 0o755 if mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
