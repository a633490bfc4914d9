"""The commands in README.md and docs/*.md that are marked runnable work as written.

The marker: a fenced block whose info string is ``console runnable`` (GitHub still
highlights it as ``console``). In it, ``$ `` starts a command (a trailing ``\\`` continues it
on the next line); the lines after a command, up to the next one, are output the command must
print (stdout and stderr together), each matching one line of it, in order, with ``...``
matching anything; ``#`` lines between commands are comments. A command must exit 0, unless
it ends with the comment ``# exits N``.

Each command runs in bash from the repository root, with the virtualenv's ``bin`` first on
PATH and no ``SERVICE_*`` variable set, except ``SERVICE_BACKEND=process``: the microVM
canary of ``backend = "auto"`` cannot boot on CI hosts and only adds seconds. Keep marked
blocks fast (a few seconds each).

Also checked here: every relative link and every file a doc names in backquotes as
``spec/...``, ``docs/...`` or ``schemas/...`` exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```console runnable\n(.*?)^```$", re.M | re.S)
EXITS = re.compile(r"\s+#\s*exits (\d+)\s*$")
TIMEOUT_S = 120


@dataclass
class Command:
    doc: str
    line: int
    text: str
    expected: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        match = EXITS.search(self.text)
        return int(match.group(1)) if match else 0

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def runnable_commands(doc: Path) -> list[Command]:
    """Every command of every ``console runnable`` block of ``doc``, with its expected lines."""
    text = doc.read_text()
    commands: list[Command] = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ "):
                command = Command(doc.relative_to(ROOT).as_posix(), first_line + i, line[2:])
                while command.text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command.text = command.text[:-1] + " " + lines[i].strip()
                commands.append(command)
            elif line.strip() and not line.startswith("#") and commands:
                commands[-1].expected.append(line)
            i += 1
    return commands


COMMANDS = [command for doc in DOCS for command in runnable_commands(doc)]


def _matches(expected: list[str], output: str) -> bool:
    """Each expected line matches a line of ``output``, in order; ``...`` matches anything."""
    lines = iter(output.splitlines())
    for want in expected:
        pattern = re.compile(".*".join(map(re.escape, want.split("..."))))
        if not any(pattern.fullmatch(line) for line in lines):
            return False
    return True


def test_the_docs_mark_commands_runnable() -> None:
    """The marker is in use where a new user starts (the test cannot pass by finding none)."""
    docs = {command.doc for command in COMMANDS}
    assert {"README.md", "docs/manifest.md", "docs/configuration.md"} <= docs


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_works_as_written(command: Command) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env["SERVICE_BACKEND"] = "process"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-c", command.text], cwd=ROOT, env=env, text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    assert proc.returncode == command.status, f"{command}\n{proc.stdout}"
    assert _matches(command.expected, proc.stdout), (
        f"{command}\nexpected, in order:\n" + "\n".join(command.expected)
        + f"\ngot:\n{proc.stdout}")


def test_the_runner_rejects_what_it_should() -> None:
    assert _matches(["a ... c"], "x\na b c\n")
    assert not _matches(["a ... c"], "a b c d\n")
    assert not _matches(["2", "1"], "1\n2\n")  # order counts
    cmd = runnable_commands_from_text("```console runnable\n$ false  # exits 1\nout\n```\n")
    assert [(c.text, c.status, c.expected) for c in cmd] == [("false  # exits 1", 1, ["out"])]


def runnable_commands_from_text(text: str) -> list[Command]:
    import tempfile

    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        doc = Path(folder) / "doc.md"
        doc.write_text(text)
        return runnable_commands(doc)


# --- references ---

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED_FILE = re.compile(r"`((?:spec|docs|schemas|config|scripts)/[\w./-]+\.\w+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_every_referenced_file_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = [target for target in LINK.findall(text)
               if "://" not in target and not (doc.parent / target).exists()]
    missing += [name for name in NAMED_FILE.findall(text)
                if not (ROOT / name).exists() and not (doc.parent / name).exists()]
    assert missing == []
