"""What /proc says about a process and its descendants: RSS, PSS, CPU time."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1 << 20


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process ended meanwhile
        return ""


def _field_kib(text: str, key: str) -> int:
    """``key:   123 kB`` from a /proc status-like file, in bytes; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * KIB
    return 0


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` (0 once it is gone)."""
    return _field_kib(_read(Path(f"/proc/{pid}/status")), "VmRSS")


def pss_bytes(pid: int) -> int:
    """Pss of ``pid`` from smaps_rollup: shared pages split between their users."""
    return _field_kib(_read(Path(f"/proc/{pid}/smaps_rollup")), "Pss")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    text = _read(Path(f"/proc/{pid}/stat"))
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": state is field 3
    if len(fields) < 13:
        return 0.0
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (across all its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in _read(task / "children").split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, depth first."""
    out: list[int] = []
    stack = children(pid)
    while stack:
        child = stack.pop()
        out.append(child)
        stack += children(child)
    return out


def cmdline(pid: int) -> list[str]:
    raw = _read(Path(f"/proc/{pid}/cmdline"))
    return [part for part in raw.split("\0") if part]


@dataclass(frozen=True)
class Tree:
    """One process subtree (e.g. one sandbox: bwrap and what runs inside)."""

    root: int
    pids: tuple[int, ...]
    rss: int
    pss: int
    commands: tuple[str, ...]

    def runs(self, word: str) -> bool:
        """Whether any process of the tree has ``word`` in its command line."""
        return any(word in command for command in self.commands)


def tree(root: int) -> Tree:
    pids = (root, *descendants(root))
    return Tree(root, pids, sum(map(rss_bytes, pids)), sum(map(pss_bytes, pids)),
                tuple(" ".join(cmdline(pid)) for pid in pids))


def child_trees(pid: int) -> list[Tree]:
    """One Tree per direct child of ``pid``: the server's sandboxes, one per worker."""
    return [tree(child) for child in children(pid)]


def total(trees: Iterable[Tree]) -> tuple[int, int]:
    """Summed (RSS, PSS) of ``trees``."""
    items = list(trees)
    return sum(t.rss for t in items), sum(t.pss for t in items)


def bundle_command(pid: int) -> str:
    """The command of the OCI bundle a ``runsc ... run --bundle DIR`` process runs ("" if
    ``pid`` is no such process or its bundle is gone)."""
    words = cmdline(pid)
    if "--bundle" not in words[:-1]:
        return ""
    config = Path(words[words.index("--bundle") + 1]) / "config.json"
    try:
        return " ".join(json.loads(config.read_text())["process"]["args"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
