"""Reading the files a manifest brings in: the manifest, its script, its schema files.

Every such file is read here, and only if it is a regular file of bounded size. A
named pipe (FIFO) below a manifest's folder would otherwise block its reader forever:
``lint`` would hang, and each ``load`` would hold a thread of the server's default
executor, the pool that also admits sandboxes. The type is checked before opening
(a device is never opened) and again on the open descriptor (the path may have been
swapped in between); the open itself never waits (``O_NONBLOCK``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# A script is read whole (ast, the metadata reader): real ones are kilobytes, bundles
# megabytes; past this it is refused rather than parsed.
MAX_SCRIPT_BYTES = 16 << 20
# A schema file ($ref) is embedded whole in the published port schema (every `list` and
# `describe` answer): the budget of a manifest's scalars once aliases are expanded.
MAX_SCHEMA_FILE_BYTES = 2 << 20
_CHUNK_BYTES = 1 << 16

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class FileRefused(OSError):
    """The path is not a regular file, or the file is over its size limit."""


class FileTooBig(FileRefused):
    """The file is over its size limit."""


def read_bytes(path: Path | str, max_bytes: int) -> bytes:
    """The contents of the regular file ``path``, at most ``max_bytes``; else FileRefused.

    OSError as usual when it cannot be opened (missing, no permission).
    """
    _check_kind(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        _check_kind(info.st_mode)
        if info.st_size > max_bytes:
            raise _too_big(max_bytes)
        chunks, size = [], 0
        while chunk := os.read(fd, _CHUNK_BYTES):  # the size may change while we read
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path | str, max_bytes: int) -> str:
    """``read_bytes`` decoded as UTF-8 (UnicodeDecodeError when it is not)."""
    return read_bytes(path, max_bytes).decode("utf-8")


def _check_kind(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    raise FileRefused(f"not a regular file ({kind})")


def _too_big(max_bytes: int) -> FileTooBig:
    return FileTooBig(f"over the size limit ({max_bytes} bytes)")
