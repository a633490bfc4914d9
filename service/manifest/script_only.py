"""Script-only actors: a script with no manifest beside it, whose metadata is in the script.

A manifest beside the script (same stem, ``.yaml`` or ``.yml``) always wins. The metadata
(service/manifest/metadata.py) becomes a manifest checked by the loader like any other;
its problems point at the script, at the line of the metadata.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import Problem
from service.manifest.loader import ManifestCheck, check_document, display_path
from service.manifest.metadata import MetadataError, manifest_of, read_metadata
from service.manifest.yamlnodes import YamlDoc
from service.settings import Settings

SCRIPT_LANGUAGES = {".py": "python", ".js": "javascript", ".mjs": "javascript",
                    ".cjs": "javascript"}
METADATA_HINT = {"python": "an @actor({...}) decorator",
                 "javascript": "const metadata = {...} or a JSDoc @component block"}
NO_SCHEMA_WARNING = ("script-only actor: its ports have no schemas (any JSON passes); "
                     "a manifest {} beside the script declares them")


def is_script(path: Path) -> bool:
    return path.suffix in SCRIPT_LANGUAGES


def manifest_beside(script: Path) -> Path | None:
    """The manifest that stands for ``script`` (same stem), if there is one."""
    for suffix in (".yaml", ".yml"):
        candidate = script.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def has_metadata(script: Path) -> bool:
    """Does the script declare itself (for folder walks: other scripts are helper modules)?"""
    try:
        return read_metadata(script, SCRIPT_LANGUAGES[script.suffix]) is not None
    except MetadataError:
        return True  # it tries to: its problem is worth reporting


def check_script_only(path: Path | str, settings: Settings) -> ManifestCheck:
    """Check a script as a script-only actor; the problems name both expected sources."""
    script = Path(path)
    display = display_path(script)
    language = SCRIPT_LANGUAGES[script.suffix]
    try:
        meta = read_metadata(script, language)
        raw = manifest_of(meta, script, language) if meta is not None else None
    except MetadataError as exc:
        return _failed(display, str(exc), exc.line, exc.column)
    if meta is None or raw is None:
        return _failed(display, f"no manifest ({script.stem}.yaml or {script.stem}.yml) beside "
                       f"the script and no actor metadata in it ({METADATA_HINT[language]})", 1)
    if not isinstance(raw["id"], str):
        return _failed(display, "the actor metadata names no component (component or name)",
                       meta.line)
    doc = YamlDoc(raw, {"": (meta.line, 1)}, {})
    return check_document(doc, display, script.resolve(), settings)


def schema_warning(check: ManifestCheck) -> Problem:
    """The lint warning every script-only actor gets."""
    stem = Path(check.file).stem
    line, column = check.id_position or (None, None)
    return Problem(check.file, line, column, NO_SCHEMA_WARNING.format(f"{stem}.yaml"), "",
                   "warning")


def _failed(display: str, message: str, line: int | None = None,
            column: int | None = None) -> ManifestCheck:
    """A problem in the script's text: at ``line`` (and ``column``, else the line's start)."""
    return ManifestCheck(display, None, [Problem(display, line, column or (line and 1),
                                                 message, "")])


SKIPPED_DIRS = ("node_modules", "__pycache__")


def find_scripts(folder: Path) -> list[Path]:
    """Scripts below ``folder`` with no manifest beside them (hidden folders skipped)."""
    found = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p in SKIPPED_DIRS for p in parts):
            continue
        if is_script(path) and path.is_file() and manifest_beside(path) is None:
            found.append(path)
    return found
