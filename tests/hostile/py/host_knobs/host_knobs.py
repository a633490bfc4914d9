"""What kernel uid 0 could do even without a capability, and what a shared uid shares.

arg "knobs": open global /proc/sys files and /proc/sysrq-trigger for writing, chmod the
device nodes (host inodes bound into /dev). Every attempt must fail. None changes
anything where it succeeds (nothing is written, a node gets the mode it has): the row
proves the power without damaging a host where the sandbox has it.
arg "inotify": take every inotify instance this uid may have, and keep them: another
sandbox, or a host process of uid 65534, must still get one.
arg "pty": take every pseudo-terminal it can (the host has one pool of them,
kernel.pty.max), and keep them: the host counts them in /proc/sys/kernel/pty/nr.
"""

import ctypes
import os

KNOBS = ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
         "/proc/sys/kernel/sysrq", "/proc/sysrq-trigger", "/proc/sys/fs/inotify/max_user_instances")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/full")
_kept = []


def _attempts():
    attempts = {}
    for path in KNOBS:
        attempts[f"write {path}"] = lambda path=path: _write(path)
    for path in DEVICES:
        attempts[f"chmod {path}"] = lambda path=path: os.chmod(path, _mode(path))
    return attempts


def _mode(path):
    return os.stat(path).st_mode & 0o7777


def _write(path):
    fd = os.open(path, os.O_WRONLY)
    os.close(fd)


def _inotify_all():
    libc = ctypes.CDLL(None, use_errno=True)
    while len(_kept) < 4096:
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            break
        _kept.append(fd)
    return len(_kept)


def _ptys_all():
    while len(_kept) < 4096:
        try:
            _kept.extend(os.openpty())
        except OSError:
            break
    return len(_kept) // 2


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    if context.get_input("arg") == "inotify":
        return {"made": _inotify_all()}
    if context.get_input("arg") == "pty":
        return {"made": _ptys_all()}
    done, errors = [], []
    for name, attempt in _attempts().items():
        try:
            attempt()
            done.append(name)
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror}")
    return {"blocked": not done, "done": done, "error": "; ".join(errors)}
