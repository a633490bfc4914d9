"""Host uids for process sandboxes: a distinct unprivileged uid per live sandbox.

Each sandbox's bubblewrap runs as a uid of ``[sandbox.uid_base, uid_base + uid_count)``
that no other live sandbox holds, mapped to 65534 inside. Per-user kernel quotas
(inotify instances and watches, RLIMIT_NPROC, user namespaces, keys) are then per
sandbox, and a sandbox can neither signal, ptrace nor read the memory of another one:
they are different users to the kernel.

A uid is taken by locking its byte of a lock file (open file description locks: released
by the kernel when the server dies, and, unlike classic POSIX locks, held per open file,
so two backends of one process exclude each other too): two servers sharing the lock
file never hand out the same uid. The lock file lives in ``/run`` when the server may
write there (shared by every server of the machine), else in the server's own runtime
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from pathlib import Path

from service.errors import SandboxUnavailable

logger = logging.getLogger(__name__)

SHARED_LOCK_DIR = Path("/run/actor-sandbox")
UID_MAX = 4_294_967_294  # (uid_t)-1 means "no change" to the kernel
FLOCK = "hhqqixxxx"  # struct flock on 64-bit Linux: type, whence, start, len, pid


class UidPool:
    """Hands out the uids of one range, one sandbox each, and takes them back."""

    def __init__(self, base: int, count: int, fallback_dir: Path, backend: str) -> None:
        self.base = base
        self.count = count
        self._backend = backend
        self._lock_fd = _open_lock_file(base, fallback_dir)
        self._held: set[int] = set()
        self._next = 0  # round robin: a uid just released is the last one handed out again

    def acquire(self) -> int:
        """A uid no live sandbox holds; SandboxUnavailable when the range is exhausted."""
        for step in range(self.count):
            index = (self._next + step) % self.count
            if index in self._held or not self._try_lock(index):
                continue
            self._held.add(index)
            self._next = index + 1
            return self.base + index
        raise SandboxUnavailable(
            self._backend, f"all {self.count} sandbox uids from {self.base} are in use "
                           "(raise sandbox.uid_count)")

    def release(self, uid: int) -> None:
        """Give ``uid`` back (its sandbox's processes are all dead)."""
        index = uid - self.base
        if index not in self._held:
            return
        self._held.discard(index)
        with contextlib.suppress(OSError):
            _ofd_lock(self._lock_fd, fcntl.F_UNLCK, index)

    @property
    def in_use(self) -> int:
        return len(self._held)

    def close(self) -> None:
        os.close(self._lock_fd)  # drops every lock this server holds
        self._held.clear()

    def _try_lock(self, index: int) -> bool:
        try:
            _ofd_lock(self._lock_fd, fcntl.F_WRLCK, index)
        except OSError:
            return False  # another server's sandbox holds it
        return True


def _ofd_lock(fd: int, kind: int, index: int) -> None:
    """Lock (F_WRLCK) or unlock (F_UNLCK) byte ``index`` of ``fd``, without waiting."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, kind, os.SEEK_SET, index, 1, 0))


def _open_lock_file(base: int, fallback_dir: Path) -> int:
    """The lock file of the range starting at ``base`` (one per range: ranges may differ)."""
    name = f"uids-{base}.lock"
    with contextlib.suppress(OSError):
        SHARED_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        return os.open(SHARED_LOCK_DIR / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                       | os.O_NOFOLLOW, 0o600)
    logger.info("cannot write %s: sandbox uids are locked against this server only",
                SHARED_LOCK_DIR)
    return os.open(fallback_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                   | os.O_NOFOLLOW, 0o600)
