"""An actor's script: where it may live, and whether it parses and defines its entrypoint.

Python is parsed with ``ast``. JavaScript is parsed by ``node --check`` (which
tells CommonJS from ES modules by itself: ``.mjs``, ``.cjs``, and for ``.js``
the syntax); its entrypoint is then found with regular expressions, which is
an approximation: a top-level ``function NAME`` / ``async function NAME`` or
``const|let|var NAME =`` starting a line, ``exports.NAME =``,
``module.exports = { NAME }`` or ``export { NAME }``.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.manifest.files import MAX_SCRIPT_BYTES, read_text

EXTENSIONS = {"python": (".py",), "javascript": (".js", ".mjs", ".cjs")}
NODE_CHECK_TIMEOUT_S = 30


class ScriptPathError(ValueError):
    """The manifest's ``script`` value names no acceptable file."""


@dataclass(frozen=True)
class ScriptIssue:
    """A problem with a script. ``in_script``: line/column are in the script, not the manifest."""

    message: str
    in_script: bool = False
    line: int | None = None
    column: int | None = None


def resolve_script(root: Path, script: str) -> Path:
    """The script's resolved path, which must stay inside ``root`` (the manifest's folder)."""
    relative = PurePosixPath(script)
    if relative.is_absolute():
        raise ScriptPathError(f"{script!r} is an absolute path; give it relative to the manifest")
    if ".." in relative.parts:
        raise ScriptPathError(f"{script!r} leaves the manifest's folder ('..' is not allowed)")
    candidate = root / relative
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ScriptPathError(f"{script!r} is a symlink leading out of the manifest's folder")
    if not resolved.exists():
        raise ScriptPathError(f"{script!r} does not exist")
    if not resolved.is_file():
        raise ScriptPathError(f"{script!r} is not a file")
    return resolved


def extension_issue(path: Path, language: str) -> str | None:
    """Why ``path``'s extension does not fit ``language``, or None."""
    allowed = EXTENSIONS[language]
    if path.suffix in allowed:
        return None
    return f"a {language} script must end in {' or '.join(allowed)}, not {path.suffix!r}"


def check_script(path: Path, language: str, entrypoint: str, node: str) -> list[ScriptIssue]:
    """Parse the script and look for its entrypoint (``node`` is the node binary)."""
    try:
        source = read_text(path, MAX_SCRIPT_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        return [ScriptIssue(f"cannot read the script: {exc}")]
    if language == "python":
        return _check_python(source, path, entrypoint)
    return _check_javascript(source, path, entrypoint, node)


def _check_python(source: str, path: Path, entrypoint: str) -> list[ScriptIssue]:
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        return [ScriptIssue(f"invalid Python: {exc.msg}", True, exc.lineno, exc.offset)]
    except (RecursionError, MemoryError):  # CPython's parser gives up on very deep nesting
        return [ScriptIssue("invalid Python: the script is nested too deeply to parse", True,
                            1, 1)]
    defined = any(isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
                  and stmt.name == entrypoint for stmt in module_level(tree.body))
    return [] if defined else [_no_entrypoint(path, entrypoint)]


def module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run when the module is imported: its own, and those inside its
    ``if``/``try``/``with``/``for``/``while``/``match`` blocks (not function or class
    bodies), so ``if True: def process(...)`` defines ``process`` as the module does."""
    for stmt in body:
        yield stmt
        for block in _blocks(stmt):
            yield from module_level(block)


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    if isinstance(stmt, ast.If | ast.For | ast.AsyncFor | ast.While):
        return [stmt.body, stmt.orelse]
    if isinstance(stmt, ast.With | ast.AsyncWith):
        return [stmt.body]
    if isinstance(stmt, ast.Try | ast.TryStar):
        return [stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody]
    if isinstance(stmt, ast.Match):
        return [case.body for case in stmt.cases]
    return []


def _check_javascript(source: str, path: Path, entrypoint: str, node: str) -> list[ScriptIssue]:
    try:
        run = subprocess.run([node, "--check", str(path)], capture_output=True, text=True,
                             timeout=NODE_CHECK_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return [ScriptIssue(f"cannot check JavaScript: {node} not found (settings sandbox.node)")]
    except subprocess.TimeoutExpired:
        return [ScriptIssue(f"node --check took over {NODE_CHECK_TIMEOUT_S} s")]
    if run.returncode != 0:
        return [_node_syntax_error(run.stderr)]
    return [] if _js_defines(source, entrypoint) else [_no_entrypoint(path, entrypoint)]


def _node_syntax_error(stderr: str) -> ScriptIssue:
    """node --check prints ``FILE:LINE``, the source line, a caret line, then ``XError: msg``."""
    lines = stderr.splitlines()
    line = column = None
    head = re.match(r"^.*:(\d+)$", lines[0]) if lines else None
    if head:
        line = int(head.group(1))
        if len(lines) > 2 and re.fullmatch(r"\s*\^+\s*", lines[2]):
            column = lines[2].index("^") + 1
    message = next((ln for ln in lines if re.match(r"^[A-Z]\w*Error\b", ln)), "node --check failed")
    return ScriptIssue(f"invalid JavaScript: {message}", True, line, column)


def _js_defines(source: str, name: str) -> bool:
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)  # block comments
    code = re.sub(r"^\s*//.*$", "", code, flags=re.M)  # whole-line comments
    n = rf"(?<![\w$]){re.escape(name)}(?![\w$])"
    patterns = (
        rf"^(?:export\s+)?(?:async\s+)?function\s*\*?\s*{n}\s*\(",
        rf"^(?:export\s+)?(?:const|let|var)\s+{n}\s*=",
        rf"(?<![\w$.])(?:module\.)?exports\.{n}\s*=",
        rf"(?<![\w$.])module\.exports\s*=\s*\{{(?:[^{{}}]*?,)?\s*(?:async\s+)?{n}\s*[,}}:(]",
        rf"^export\s*\{{(?:[^{{}}]*?,)?\s*(?:[\w$]+\s+as\s+)?{n}\s*[,}}]",
    )
    return any(re.search(p, code, flags=re.M) for p in patterns)


def _no_entrypoint(path: Path, entrypoint: str) -> ScriptIssue:
    return ScriptIssue(f"{path.name} defines no top-level function {entrypoint!r}")
