"""The seccomp filter of process sandboxes: system calls no actor needs fail with EPERM.

Namespaces already make most of these harmless; the filter shrinks the kernel surface a
script can reach (keyrings, BPF, io_uring, perf, ptrace, mounts, modules...), since a
kernel bug reachable from inside is the way out of a process sandbox. Calls from any
other architecture (32-bit or x32 entry points) kill the process.

Sockets: only the families actors use (what python3 and node create, measured with
``strace -f`` over the example and hostile corpus, docs/backends.md): AF_UNIX, AF_INET,
AF_INET6, and AF_NETLINK for actors with ``limits.network`` (glibc's getaddrinfo and
node's os.networkInterfaces ask the kernel's routing tables through it). Any other family
(AF_PACKET, AF_VSOCK, AF_ALG, AF_KEY, AF_XDP, ...: rare code paths, a history of kernel
bugs) fails with EAFNOSUPPORT, as on a kernel built without it.
"""

from __future__ import annotations

import errno
import logging
import tempfile

logger = logging.getLogger(__name__)

DENIED = (
    # kernel keyrings, BPF, io_uring, perf and tracing: large, bug-prone surfaces
    "add_key", "request_key", "keyctl", "bpf", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "perf_event_open", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "userfaultfd", "lookup_dcookie",
    # namespaces, mounts and file handles
    "unshare", "setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "name_to_handle_at",
    "open_by_handle_at",
    # the machine itself: modules, kexec, reboot, clocks, swap, quotas, accounting
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "swapon",
    "swapoff", "quotactl", "acct", "iopl", "ioperm", "syslog", "personality",
    "uselib", "ustat", "sysfs", "vhangup", "nfsservctl",
    # odd memory: secret memory, per-process segment tables
    "memfd_secret", "modify_ldt",
    # System V IPC: its objects outlive a call inside the sandbox's IPC namespace, where the
    # host cannot check that a reset removed them (POSIX shm lives in /dev/shm: read-only)
    "msgget", "msgsnd", "msgrcv", "msgctl", "shmget", "shmat", "shmdt", "shmctl",
    "semget", "semop", "semtimedop", "semctl",
    # POSIX message queues: the same (they live in the IPC namespace's mqueue filesystem)
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # Linux AIO: its contexts come from one host-wide pool (fs.aio-max-nr), which a single
    # sandbox could take for itself and keep through its idle time (io_uring is above)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # file watches: every sandbox mounts the same /usr and harness files, so a watch on
    # them sees other actors' sandboxes start and import (a side channel between actors);
    # each instance is also taken from its host uid's few (fs.inotify.max_user_instances)
    "inotify_init", "inotify_init1", "fanotify_init",
)
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
FAMILY_MAX = 63  # every family above is refused by one comparison (64-bit: high bits too)
SOCKET_CALLS = ("socket", "socketpair")


def allowed_families(network: bool) -> tuple[int, ...]:
    """The socket families a sandbox may create."""
    return (AF_UNIX, AF_INET, AF_INET6) + ((AF_NETLINK,) if network else ())


def refused_families(network: bool) -> list[int]:
    """The families up to FAMILY_MAX that SOCKET_CALLS refuse (EAFNOSUPPORT); every family
    above FAMILY_MAX is refused too. The process backend's filter and gVisor's OCI seccomp."""
    allowed = allowed_families(network)
    return [family for family in range(FAMILY_MAX + 1) if family not in allowed]


def denylist_program(network: bool = False) -> bytes | None:
    """The filter as a BPF program for ``bwrap --seccomp FD``; None without libseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # the module, or libseccomp.so.2, is missing
        logger.warning("no seccomp filter for process sandboxes: %s", exc)
        return None
    program = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        try:
            program.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError):  # a call this kernel/architecture does not have
            logger.debug("seccomp: no system call %s here", name)
    refused = seccomp.ERRNO(errno.EAFNOSUPPORT)
    for call in SOCKET_CALLS:
        for family in refused_families(network):
            program.add_rule(refused, call, seccomp.Arg(0, seccomp.EQ, family))
        program.add_rule(refused, call, seccomp.Arg(0, seccomp.GT, FAMILY_MAX))
    with tempfile.TemporaryFile() as out:
        program.export_bpf(out)
        out.seek(0)
        return out.read()
