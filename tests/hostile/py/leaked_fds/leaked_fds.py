"""Look for file descriptors the host left open in the sandbox (a leaked directory fd is an
``openat`` escape, as in runc's CVE-2024-21626). Every open fd must be a pipe, a socket,
an anonymous inode, or a file the sandbox itself can see. Under gVisor the stdio pipes the
host hands the sandbox show as ``host:[N]``: harmless unless one is a directory.
"""

import contextlib
import os

HARMLESS = ("pipe:", "socket:", "anon_inode:", "/dev/null", "/proc/")
HOST_FD = "host:["  # gVisor: a host fd given to the sandbox


def _leaked(fd, target):
    if target.startswith(HOST_FD):
        return os.path.isdir(f"/proc/self/fd/{fd}")
    if target.startswith(HARMLESS):
        return False
    return not os.path.exists(target) or os.path.isdir(f"/proc/self/fd/{fd}")


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is already closed
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
    leaked = [f"{fd} -> {target}" for fd, target in fds.items() if _leaked(fd, target)]
    return {"blocked": not leaked, "error": "", "leaked": leaked, "fds": sorted(fds.values())}
