"""``service lint``: check manifests together and print every problem.

A path that does not exist is reported as a problem of that path (exit 1),
like any other thing wrong with the input; usage errors (exit 2) are the CLI's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from service.errors import Problem
from service.manifest.loader import ManifestCheck, check_manifest, display_path, find_manifests
from service.manifest.model import ActorDef
from service.manifest.script_only import (
    check_script_only,
    find_scripts,
    has_metadata,
    is_script,
    manifest_beside,
    schema_warning,
)
from service.settings import Settings

FORMATS = ("text", "json", "github")


def lint_paths(paths: Sequence[Path | str], settings: Settings) -> list[Problem]:
    """Every problem of the manifests found under ``paths``, ids checked across all of them."""
    return check_paths(paths, settings)[1]


def check_paths(
    paths: Sequence[Path | str], settings: Settings
) -> tuple[list[ActorDef], list[Problem]]:
    """Load every manifest and script-only actor under ``paths``: the valid actors, and
    every problem found (warnings included: see Problem.is_error)."""
    files, explicit, walked, problems = _sources(paths)
    actors: list[ActorDef] = []
    first_file: dict[str, str] = {}  # actor id -> the file that used it first
    checks = [check_manifest(file, settings) for file in sorted(files)]
    used = {check.actor.script for check in checks if check.actor is not None}
    scripts = explicit | {s for s in walked if s.resolve() not in used and has_metadata(s)}
    for script in sorted(scripts):
        check = check_script_only(script, settings)
        checks.append(check)
        if check.actor is not None:
            problems.append(schema_warning(check))
    for check in checks:
        problems += _collect(check, actors, first_file)
    return actors, problems


def _sources(paths: Sequence[Path | str]) -> tuple[set[Path], set[Path], set[Path], list[Problem]]:
    """Manifests, scripts named explicitly, scripts found in folders, and missing paths."""
    files: set[Path] = set()
    explicit: set[Path] = set()
    walked: set[Path] = set()
    problems: list[Problem] = []
    for given in map(Path, paths):
        if given.is_file() and is_script(given):
            beside = manifest_beside(given)
            if beside is None:
                explicit.add(given)
            else:
                files.add(beside)
            continue
        try:
            # One entry per real file: a settings path (absolute, from the project root) and
            # a command-line path (relative) may name the same manifest.
            known = {f.resolve() for f in files}
            files.update(f for f in find_manifests([given]) if f.resolve() not in known)
        except FileNotFoundError:
            problems.append(Problem(display_path(given), None, None, "no such file or folder"))
        if given.is_dir():
            walked.update(find_scripts(given))
    return files, explicit, walked, problems


def _collect(check: ManifestCheck, actors: list[ActorDef], first_file: dict[str, str]
             ) -> list[Problem]:
    """Record one check's actor; its problems, a duplicate id included."""
    found = list(check.problems)
    if check.actor is not None:
        actors.append(check.actor)
    if check.actor_id is not None and check.id_position is not None:
        if check.actor_id in first_file:
            line, column = check.id_position
            found.append(Problem(
                check.file, line, column,
                f"id {check.actor_id!r} is already used by {first_file[check.actor_id]}",
                "/id"))
        else:
            first_file[check.actor_id] = check.file
    return sorted(found, key=lambda p: (p.file, p.line or 0, p.column or 0))


def empty_path_problems(paths: Sequence[Path | str]) -> list[Problem]:
    """One problem per existing folder with no manifest below it (and for no path at all)."""
    if not paths:
        return [Problem("-", None, None, "no paths to lint (and manifest_paths is empty)")]
    problems = []
    for given in paths:
        folder = Path(given)
        if folder.is_dir() and not find_manifests([folder]) and not find_scripts(folder):
            problems.append(Problem(display_path(given), None, None,
                                    "no manifests (*.yaml, *.yml) in this folder; "
                                    "--allow-empty accepts that"))
    return problems


def format_problems(problems: Sequence[Problem], fmt: str) -> str:
    """``text``: ``FILE:LINE:COL: message`` lines; ``json``: a list; ``github``: annotations."""
    if fmt == "text":
        return "\n".join(str(p) for p in problems)
    if fmt == "json":  # every problem says its severity here (a tool filters on it)
        return json.dumps([{**p.to_json(), "severity": p.severity} for p in problems],
                          indent=2)
    if fmt == "github":
        return "\n".join(_github(p) for p in problems)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def lint_main(paths: Sequence[Path | str], settings: Settings, fmt: str, out: TextIO,
              *, strict: bool = False, allow_empty: bool = False) -> int:
    """Lint ``paths`` and write the problems to ``out``; 0 when clean, 1 otherwise.
    Warnings are shown but fail only with ``strict``.

    A path that holds no actor is a problem unless ``allow_empty``: a CI job pointed at
    the wrong folder must fail, not pass having checked nothing.
    """
    problems = ([] if allow_empty else empty_path_problems(paths)) + lint_paths(paths, settings)
    text = format_problems(problems, fmt)
    if text:
        out.write(text + "\n")
    return 1 if any(p.is_error or strict for p in problems) else 0


def _github(problem: Problem) -> str:
    """A GitHub Actions ``::error`` workflow command, escaped as the runner expects."""
    props = [f"file={_escape_property(problem.file)}"]
    if problem.line is not None:
        props.append(f"line={problem.line}")
        if problem.column is not None:
            props.append(f"col={problem.column}")
    level = "error" if problem.is_error else "warning"
    return f"::{level} {','.join(props)}::{_escape_data(problem.message)}"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
