"""Kernel surface no actor needs, each a history of kernel bugs: socket families other
than unix/inet/inet6 (netlink, packet, vsock, alg, key, xdp, ...: also through a family
with high bits set, and socketpair), SysV IPC and POSIX message queues (their objects
outlive a call), Linux AIO (a host-wide pool of contexts), memfd_secret, modify_ldt.
Every attempt must fail; unix, inet and inet6 sockets must still work.
System call numbers are x86_64's.
"""

import ctypes
import os
import socket

FAMILIES = {"netlink": 16, "packet": 17, "vsock": 40, "alg": 38, "key": 15, "xdp": 44,
            "appletalk": 5, "bluetooth": 31, "can": 29, "rds": 21, "tipc": 30, "unspec": 0}
SYSCALLS = {"socket": 41, "socketpair": 53, "memfd_secret": 447, "modify_ldt": 154,
            "msgget": 68, "shmget": 29, "semget": 64, "io_setup": 206, "mq_open": 240}
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _syscall(name, *args):
    result = libc.syscall(SYSCALLS[name], *[ctypes.c_long(a) for a in args])
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if name in ("socket", "memfd_secret", "mq_open"):
        os.close(result)


def _attempts():
    attempts = {f"socket {name}": (lambda f=f: _syscall("socket", f, socket.SOCK_RAW, 0))
                for name, f in FAMILIES.items()}
    attempts["socket dgram netlink"] = lambda: _syscall("socket", 16, socket.SOCK_DGRAM, 0)
    attempts["socket high bits"] = lambda: _syscall("socket", (1 << 32) | 16, 2, 0)
    pair = (ctypes.c_int * 2)()
    attempts["socketpair netlink"] = lambda: _syscall("socketpair", 16, 2, 0,
                                                      ctypes.addressof(pair))
    attempts["memfd_secret"] = lambda: _syscall("memfd_secret", 0)
    buf = ctypes.create_string_buffer(64)
    attempts["modify_ldt"] = lambda: _syscall("modify_ldt", 0, ctypes.addressof(buf), 64)
    attempts["msgget"] = lambda: _syscall("msgget", IPC_PRIVATE, IPC_CREAT | 0o600)
    attempts["shmget"] = lambda: _syscall("shmget", IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
    attempts["semget"] = lambda: _syscall("semget", IPC_PRIVATE, 1, IPC_CREAT | 0o600)
    context = ctypes.c_ulong(0)
    attempts["io_setup"] = lambda: _syscall("io_setup", 1, ctypes.addressof(context))
    queue = ctypes.create_string_buffer(b"left-for-the-next-call")
    attempts["mq_open"] = lambda: _syscall("mq_open", ctypes.addressof(queue),
                                           os.O_CREAT | os.O_RDWR, 0o600, 0)
    return attempts


def _basics():
    works = []
    for name, family in (("unix", socket.AF_UNIX), ("inet", socket.AF_INET),
                         ("inet6", socket.AF_INET6)):
        try:
            socket.socket(family, socket.SOCK_STREAM).close()
            works.append(name)
        except OSError:
            pass
    return works


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    done, errors = [], []
    for name, attempt in _attempts().items():
        try:
            attempt()
            done.append(name)
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror}")
    return {"blocked": not done, "done": done, "basics": _basics(), "error": "; ".join(errors)}
