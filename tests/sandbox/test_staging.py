"""Staged copies: readable by every user, never a way to copy host files in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from service.sandbox.staging import stage


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_private_folder_is_copied_readable_by_everyone(tmp_path: Path) -> None:
    source = tmp_path / "actor"
    (source / "sub").mkdir(parents=True)
    (source / "a.py").write_text("x")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "a.py").chmod(0o600)
    (source / "run.sh").chmod(0o700)
    (source / "sub").chmod(0o700)
    source.chmod(0o700)
    staged = stage({"actor": source})
    try:
        copy = staged / "actor"
        assert mode(staged.root) == 0o755 and mode(copy) == 0o755
        assert mode(copy / "sub") == 0o755
        assert mode(copy / "a.py") == 0o644 and (copy / "a.py").read_text() == "x"
        assert mode(copy / "run.sh") == 0o755
    finally:
        staged.remove()
    assert not staged.root.exists()
    staged.remove()  # idempotent


def test_links_are_copied_as_links_and_special_files_left_out(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host only")
    source = tmp_path / "actor"
    source.mkdir()
    (source / "escape").symlink_to(secret)
    os.mkfifo(source / "fifo")
    staged = stage({"actor": source})
    try:
        copy = staged / "actor"
        assert os.readlink(copy / "escape") == str(secret)  # a link: resolved in the sandbox
        assert not (copy / "fifo").exists()
        assert sorted(p.name for p in copy.iterdir()) == ["escape"]
    finally:
        staged.remove()
