"""Actor metadata written in the script itself (shared/spec/state.md, "Script-only actors").

Read statically, never by running the script on the host:

- Python: the decorator ``@actor({...})`` (one dict literal) or ``@actor(name=..., ...)``
  (keyword literals) on a top-level function, which becomes the entrypoint. Parsed with
  ``ast``; every value must be a literal (``ast.literal_eval``).
- JavaScript: ``const|let|var metadata = {...}`` at the start of a line, whose object
  literal is read by :class:`_JsLiteral`: objects, arrays, strings ('...', "...", and
  `...` without ``${``), numbers, true/false/null, identifier or string keys, comments and
  trailing commas. Anything else (a variable, a call, a spread) is refused with its line.
  Or a JSDoc block holding ``@component NAME`` (with ``@description TEXT``, ``@inport
  NAME`` / ``@outport NAME``, repeatable or comma-separated).

The metadata becomes a manifest (:func:`manifest_of`) checked by the manifest loader like
any other: ``component``/``name`` is the id, ports get the permissive schema ``{}``,
``config_schema`` the config schema, ``memory`` ("256MB", "1GiB") and ``timeout`` (s) the
limits (over ``limits_max`` they are refused), ``state_backend="redis"`` declares persistent
state (documentation); other keys are accepted and ignored.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from service.errors import Problem
from service.manifest.files import MAX_SCRIPT_BYTES, read_text
from service.manifest.numbers import (
    NumberError,
    brief,
    number_problem,
    parse_float,
    parse_int,
    too_large,
)
from service.manifest.scripts import module_level

# A decorator that may be @actor (spaces after @, a module's actor: @rt.actor): the
# script is parsed only then. A false hint costs a parse, never metadata.
PYTHON_HINT = re.compile(r"@[\w.\s\\]*\bactor\b")
JS_DECLARATION = re.compile(r"^[ \t]*(?:export\s+)?(?:const|let|var)\s+metadata\s*=\s*", re.M)
JSDOC = re.compile(r"/\*\*(.*?)\*/", re.S)
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)
PERSISTENT_BACKENDS = ("redis", "persistent")  # the origin's state_backend values that persist
UNIT_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}


@dataclass(frozen=True)
class ScriptMetadata:
    """What a script says about itself, and where (1-based line)."""

    values: dict[str, Any]
    line: int
    entrypoint: str = "process"


class MetadataError(Exception):
    """The script has metadata, but it cannot be read (not a literal, a syntax error)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None
                 ) -> None:
        self.line = line
        self.column = column
        super().__init__(message)


def read_metadata(path: Path, language: str) -> ScriptMetadata | None:
    """The script's metadata, None when it declares none; MetadataError when unreadable."""
    try:
        source = read_text(path, MAX_SCRIPT_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"cannot read the script: {exc}") from None
    if language == "python":
        return _python_metadata(source, path) if PYTHON_HINT.search(source) else None
    return _js_metadata(source)


def manifest_of(meta: ScriptMetadata, script: Path, language: str) -> dict[str, Any]:
    """The manifest the metadata stands for (checked afterwards like any manifest);
    MetadataError when a value cannot stand in one (a size past any number)."""
    values = meta.values
    manifest: dict[str, Any] = {"id": values.get("component", values.get("name")),
                                "language": language, "script": script.name}
    if meta.entrypoint != "process":
        manifest["entrypoint"] = meta.entrypoint
    if "description" in values:
        manifest["description"] = values["description"]
    required = values.get("await_all_inports") is True
    manifest["inports"] = _ports(values.get("inports"), {"required": required})
    manifest["outports"] = _ports(values.get("outports"), {})
    if isinstance(values.get("config_schema"), dict | bool):
        manifest["config"] = {"schema": values["config_schema"]}
    try:
        limits = _limits(values)
    except NumberError as exc:
        raise MetadataError(f"memory: {exc}", meta.line) from None
    if limits:
        manifest["limits"] = limits
    if values.get("state_backend") in PERSISTENT_BACKENDS:
        manifest["state"] = "persistent"
    return manifest


def metadata_problem(display: str, message: str, line: int | None) -> Problem:
    return Problem(display, line, None, message, "")


# --- Python ---


def _python_metadata(source: str, path: Path) -> ScriptMetadata | None:
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise MetadataError(f"invalid Python: {exc.msg}", exc.lineno) from None
    for stmt in module_level(tree.body):  # where scripts.py looks for the entrypoint
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in stmt.decorator_list:
            if _is_actor(decorator):
                values = _decorator_values(decorator)
                return ScriptMetadata(_json_like(values, decorator), decorator.lineno, stmt.name)
    return None


def _is_actor(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "actor") or (
        isinstance(target, ast.Attribute) and target.attr == "actor")


def _decorator_values(node: ast.expr) -> dict[str, Any]:
    if not isinstance(node, ast.Call):
        raise _at(node, "@actor needs its metadata: @actor({...}) or @actor(name=...)")
    if len(node.args) > 1 or (node.args and node.keywords):
        raise _at(node, "@actor takes one dict or keyword arguments, not both")
    if node.args:
        values = _literal(node.args[0])
        if not isinstance(values, dict):
            raise _at(node, "@actor's argument must be a dict literal")
        return {str(k): v for k, v in values.items()}
    out = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _at(keyword, "@actor(**...) cannot be read without running the script")
        out[keyword.arg] = _literal(keyword.value)
    return out


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _at(node, "@actor metadata must be literals (strings, numbers, lists, "
                  "dicts)") from None


def _json_like(value: Any, node: ast.expr, where: str = "") -> Any:
    """A literal's value as JSON (tuples as lists); MetadataError for what JSON lacks:
    a set, bytes, a complex, a non-string key, a number a double cannot hold."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise _at(node, f"@actor metadata{where}: key {brief(repr(key))} is not a string")
        return {k: _json_like(v, node, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_like(v, node, f"{where}[{i}]") for i, v in enumerate(value)]
    problem = number_problem(value)
    if problem is None and isinstance(value, str | int | float | bool | None):
        return value
    why = problem or f"a {type(value).__name__} is not a JSON value"
    raise _at(node, f"@actor metadata{where}: {why}")


def _at(node: ast.AST, message: str) -> MetadataError:
    return MetadataError(message, getattr(node, "lineno", None),
                         getattr(node, "col_offset", -1) + 1 or None)


# --- JavaScript ---


def _js_metadata(source: str) -> ScriptMetadata | None:
    match = JS_DECLARATION.search(source)
    if match is not None:
        line = source.count("\n", 0, match.start()) + 1
        reader = _JsLiteral(source, match.end())
        value = reader.value()
        if not isinstance(value, dict):
            raise MetadataError("metadata must be an object literal", line)
        return ScriptMetadata(value, line)
    for block in JSDOC.finditer(source):
        values = _jsdoc(block.group(1))
        if values is not None:
            return ScriptMetadata(values, source.count("\n", 0, block.start()) + 1)
    return None


def _jsdoc(text: str) -> dict[str, Any] | None:
    """The ``@component`` block's tags (None without ``@component``)."""
    tags = re.findall(r"@(\w+)[ \t]*([^@\n]*)", text)
    values: dict[str, Any] = {"inports": [], "outports": []}
    for tag, raw in tags:
        body = raw.strip().rstrip("*").strip()
        if tag == "component":
            values["component"] = body
        elif tag == "description":
            values["description"] = body
        elif tag in ("inport", "inports", "outport", "outports"):
            key = "inports" if tag.startswith("in") else "outports"
            values[key] += [p for p in re.split(r"[\s,]+", body) if p]
    return values if "component" in values else None


class _JsLiteral:
    """A reader of one JavaScript object literal (the subset in the module docstring)."""

    IDENT = re.compile(r"[A-Za-z_$][\w$]*")
    NUMBER = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
    MAX_DEPTH = 64

    def __init__(self, text: str, pos: int) -> None:
        self.text, self.pos = text, pos

    def value(self, depth: int = 0) -> Any:
        if depth > self.MAX_DEPTH:
            self._fail("metadata is nested too deeply")
        self._skip()
        char = self.text[self.pos:self.pos + 1]
        if char == "{":
            return self._object(depth)
        if char == "[":
            return self._array(depth)
        if char in ("'", '"', "`"):
            return self._string()
        number = self.NUMBER.match(self.text, self.pos)
        if number:
            try:
                return self._number(number.group())
            except NumberError as exc:
                self._fail(str(exc))
            finally:
                self.pos = number.end()
        word = self.IDENT.match(self.text, self.pos)
        if word and word.group() in ("true", "false", "null"):
            self.pos = word.end()
            return {"true": True, "false": False, "null": None}[word.group()]
        self._fail("metadata must be a literal (no variables, calls or spreads)")

    @staticmethod
    def _number(token: str) -> int | float:
        """A number token, held to what a double holds (JavaScript reads them all so)."""
        digits = token.lstrip("-")
        if digits[:2].lower() == "0x":
            value = parse_int(digits[2:], 16, shown=token)
            return -value if token.startswith("-") else value
        return parse_float(token) if any(c in token for c in ".eE") else parse_int(token)

    def _object(self, depth: int) -> dict[str, Any]:
        self.pos += 1
        out: dict[str, Any] = {}
        while True:
            self._skip()
            if self._take("}"):
                return out
            key = self._key()
            self._skip()
            if not self._take(":"):
                self._fail(f"expected ':' after {key!r} (shorthand properties are not literals)")
            out[key] = self.value(depth + 1)
            self._skip()
            if not self._take(","):
                self._skip()
                if not self._take("}"):
                    self._fail("expected ',' or '}'")
                return out

    def _array(self, depth: int) -> list[Any]:
        self.pos += 1
        out: list[Any] = []
        while True:
            self._skip()
            if self._take("]"):
                return out
            out.append(self.value(depth + 1))
            self._skip()
            if not self._take(","):
                self._skip()
                if not self._take("]"):
                    self._fail("expected ',' or ']'")
                return out

    def _key(self) -> str:
        char = self.text[self.pos:self.pos + 1]
        if char in ("'", '"'):
            return self._string()
        word = self.IDENT.match(self.text, self.pos)
        if not word:
            self._fail("expected a property name")
        self.pos = word.end()
        return word.group()

    def _string(self) -> str:
        quote = self.text[self.pos]
        out: list[str] = []
        self.pos += 1
        escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if quote == "`" and char == "$" and self.text[self.pos:self.pos + 1] == "{":
                self._fail("template literals with ${...} are not literals")
            if char == "\n" and quote != "`":
                break
            if char == "\\":
                out.append(self._escape(escapes))
                continue
            out.append(char)
        self._fail("unterminated string")

    def _escape(self, escapes: dict[str, str]) -> str:
        char = self.text[self.pos:self.pos + 1]
        self.pos += 1
        if char == "u":
            digits = self.text[self.pos:self.pos + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                self._fail("bad \\u escape")
            self.pos += 4
            return chr(int(digits, 16))
        if char == "\n":
            return ""
        return escapes.get(char, char)

    def _take(self, char: str) -> bool:
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def _skip(self) -> None:
        while True:
            while self.pos < len(self.text) and self.text[self.pos].isspace():
                self.pos += 1
            if self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif self.text.startswith("/*", self.pos):
                end = self.text.find("*/", self.pos + 2)
                if end < 0:
                    self._fail("unterminated comment")
                self.pos = end + 2
            else:
                return

    def _fail(self, message: str) -> NoReturn:
        line_start = self.text.rfind("\n", 0, self.pos) + 1
        raise MetadataError(message, self.text.count("\n", 0, self.pos) + 1,
                            self.pos - line_start + 1)


# --- the manifest's parts ---


def _ports(given: Any, extra: dict[str, Any]) -> Any:
    """A list of names (or a mapping name -> anything) as ports with the schema ``{}``."""
    if isinstance(given, list | tuple):
        return {name: {"schema": {}, **extra} for name in given} if all(
            isinstance(name, str) for name in given) else given
    if isinstance(given, dict):
        return {name: {"schema": {}, **extra} for name in given}
    return {} if given is None else given  # anything else: the format check reports it


def _limits(values: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if "memory" in values:
        limits["memory_mb"] = memory_mb(values["memory"])
    if "timeout" in values:
        limits["timeout_s"] = values["timeout"]
    return limits


def memory_mb(value: Any) -> Any:
    """"256MB" / "256MiB" / "1GB" / "1GiB" / 256 -> MiB (units are binary); else as given,
    for the format check to refuse. NumberError for a size past what a double holds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    match = MEMORY.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    unit = match.group(2).lower()
    size = parse_float(match.group(1)) * UNIT_MB[unit]  # float() of any digits: no limit
    if not math.isfinite(size):
        raise NumberError(too_large(value))
    return math.ceil(size)  # "0MB" stays 0, for the format check to refuse (minimum 1)
