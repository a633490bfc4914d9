"""The seccomp filter of process sandboxes: system calls no actor needs fail with EPERM.

Namespaces already make most of these harmless; the filter shrinks the kernel surface a
script can reach (keyrings, BPF, io_uring, perf, ptrace, mounts, modules...), since a
kernel bug reachable from inside is the way out of a process sandbox. Calls from any
other architecture (32-bit or x32 entry points) kill the process.
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
)


def denylist_program() -> bytes | None:
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
    with tempfile.TemporaryFile() as out:
        program.export_bpf(out)
        out.seek(0)
        return out.read()
