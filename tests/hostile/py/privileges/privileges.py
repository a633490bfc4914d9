"""Use privileges a sandboxed script must not have. Every attempt must fail.

mount a tmpfs, chroot, open /dev/kvm and /dev/mem, create a user namespace
(which would give it a full set of capabilities over a new namespace).
"""

import ctypes
import os

CLONE_NEWUSER = 0x10000000


def _libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _attempts():
    os.makedirs("/tmp/mnt", exist_ok=True)
    return {
        "mount": lambda: _libc_call("mount", b"none", b"/tmp/mnt", b"tmpfs", 0, None),
        "chroot": lambda: os.chroot("/tmp"),
        "kvm": lambda: os.close(os.open("/dev/kvm", os.O_RDWR)),
        "mem": lambda: os.close(os.open("/dev/mem", os.O_RDONLY)),
        "userns": lambda: _libc_call("unshare", CLONE_NEWUSER),
    }


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    done, errors = [], []
    for name, attempt in _attempts().items():
        try:
            attempt()
            done.append(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    return {"blocked": not done, "error": "; ".join(errors), "done": done}
