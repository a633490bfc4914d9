"""YAML that remembers where each value came from.

``parse_manifest_yaml`` builds plain JSON-like values from PyYAML's node tree
and records the 1-based line and column of every node under its JSON pointer,
so a problem found later (by a schema, a limit check...) points at the YAML
node that caused it. Mapping keys are always strings (the scalar as written,
so a port named ``on`` stays ``"on"``), dates stay strings, and duplicate keys
are problems rather than a silent "last one wins".

Numbers are read as YAML 1.2's core schema reads them, which is JSON's reading:
``1e300`` is a float (YAML 1.1 made it a string), ``1:30`` a string (not 90,
sexagesimal), ``017`` is 17; ``0o17`` and ``0x1F`` are octal and hex. Every number
must fit in a double (service/manifest/numbers.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from service.errors import ManifestError, Problem
from service.manifest.numbers import NumberError, brief, parse_float, parse_int

Position = tuple[int, int]
MAX_NODES = 100_000
# Characters of scalars after aliases are expanded: a few aliases of a long string must not
# make a manifest (and every `list` answer holding its descriptor) hundreds of MB.
MAX_EXPANDED_CHARS = 2_097_152
MAX_SOURCE_CHARS = 1_048_576  # the manifest file itself
_JSON_SCALARS = (str, int, float, bool, type(None))


# YAML 1.2 core schema (§10.3.2), which reads numbers the way JSON does.
_INT = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_BOOL_RESOLVER = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")  # not 1.1's yes/no/on/off
_INT_RESOLVER = re.compile(f"^(?:{_INT.pattern}|{_OCTAL.pattern}|{_HEX.pattern})$")
_FLOAT_RESOLVER = re.compile(f"^(?:{_FLOAT.pattern}|{_SPECIAL_FLOAT.pattern})$")


def _resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """SafeLoader's implicit resolvers without timestamps, with YAML 1.2 numbers and
    booleans (``yes``, ``no``, ``on`` and ``off`` are strings, as YAML 1.2 reads them)."""
    out = {first: [(tag, regexp) for tag, regexp in resolvers
                   if tag not in ("tag:yaml.org,2002:timestamp", _BOOL_TAG, *_NUMBER_TAGS)]
           for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "tTfF":
        out.setdefault(first, []).append((_BOOL_TAG, _BOOL_RESOLVER))
    for tag, regexp, firsts in (("tag:yaml.org,2002:float", _FLOAT_RESOLVER, "-+0123456789."),
                                ("tag:yaml.org,2002:int", _INT_RESOLVER, "-+0123456789")):
        for first in firsts:  # int before float: "12" matches both
            out.setdefault(first, []).insert(0, (tag, regexp))
    return out


class _JsonLoader(yaml.SafeLoader):
    """SafeLoader reading JSON's values: ``2024-01-01`` stays a string, numbers and booleans
    are YAML 1.2's."""

    yaml_implicit_resolvers = _resolvers()


def _construct_int(loader: _JsonLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if _INT.fullmatch(text):
        return parse_int(text)
    if _OCTAL.fullmatch(text) or _HEX.fullmatch(text):
        return parse_int(text[2:], 8 if text[1] == "o" else 16, shown=text)
    raise yaml.constructor.ConstructorError(
        None, None, f"{text!r} is not an integer (decimal, 0o octal or 0x hex digits)",
        node.start_mark)


def _construct_float(loader: _JsonLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node)
    if _SPECIAL_FLOAT.fullmatch(text):
        if "n" in text.lower():
            return math.nan
        return -math.inf if text.startswith("-") else math.inf
    if _FLOAT.fullmatch(text):
        return parse_float(text)
    raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a number",
                                            node.start_mark)


_JsonLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_JsonLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def escape_pointer_token(token: str | int) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str | int) -> str:
    """Join tokens into a JSON pointer: ``pointer("limits", "cpus") == "/limits/cpus"``."""
    return "".join(f"/{escape_pointer_token(t)}" for t in tokens)


def parent_pointer(ptr: str) -> str:
    """The pointer one level up (``""`` is the root and its own parent)."""
    return ptr.rsplit("/", 1)[0] if ptr else ""


@dataclass(frozen=True)
class YamlDoc:
    """A parsed manifest: its value, where each node sits, and recoverable problems."""

    value: dict[str, Any]
    values: Mapping[str, Position]  # pointer -> position of the value node
    keys: Mapping[str, Position]  # pointer -> position of the mapping key naming it
    problems: tuple[Problem, ...] = ()
    # Values refused while parsing (a problem already says why) and read as null: what
    # later checks find wrong with that null is not worth a second problem.
    refused: frozenset[str] = frozenset()

    def position(self, ptr: str, *, key: bool = False) -> Position:
        """Where ``ptr`` is (its key with ``key=True``), else its nearest ancestor's."""
        while True:
            found = self.keys.get(ptr) if key else None
            found = found or self.values.get(ptr)
            if found is not None:
                return found
            if not ptr:
                return (1, 1)
            ptr = parent_pointer(ptr)


@dataclass
class _Builder:
    """Turns a node tree into values, recording positions and problems on the way."""

    loader: _JsonLoader
    file: str
    values: dict[str, Position] = field(default_factory=dict)
    keys: dict[str, Position] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    active: set[int] = field(default_factory=set)  # nodes being built: catches alias cycles
    last: yaml.Node | None = None  # the node built last: where nesting got too deep
    built: int = 0  # nodes built so far: aliases expand, and a "billion laughs" must not
    chars: int = 0  # characters of the scalars built so far, aliases expanded

    def problem(self, node: yaml.Node, ptr: str, message: str) -> None:
        line, col = _position(node.start_mark)
        self.problems.append(Problem(self.file, line, col, message, ptr))

    def refuse(self, node: yaml.Node, ptr: str, message: str) -> None:
        """A problem with the value at ``ptr``, which is read as null."""
        self.problem(node, ptr, message)
        self.refused.add(ptr)

    def _charge(self, node: yaml.Node, chars: int) -> None:
        self.chars += chars
        if self.chars > MAX_EXPANDED_CHARS:
            line, col = _position(node.start_mark)
            raise ManifestError([Problem(self.file, line, col, "the manifest is too big: over "
                                         f"{MAX_EXPANDED_CHARS} characters after YAML aliases "
                                         "are expanded")])

    def build(self, node: yaml.Node, ptr: str) -> Any:
        self._charge(node, len(ptr))  # keys and positions repeat with every alias too
        self.values.setdefault(ptr, _position(node.start_mark))
        self.last = node
        self.built += 1
        if self.built > MAX_NODES:
            line, col = _position(node.start_mark)
            raise ManifestError([Problem(self.file, line, col,
                                         f"too many YAML nodes (over {MAX_NODES} after aliases)")])
        if id(node) in self.active:
            self.refuse(node, ptr, "a YAML alias refers to itself")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, ptr)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, f"{ptr}/{i}") for i, item in enumerate(node.value)]
            return self._scalar(node, ptr)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, ptr: str) -> dict[str, Any]:
        own = {id(key_node) for key_node, _ in node.value}
        self.loader.flatten_mapping(node)  # applies `<<` merge keys, putting merged pairs first
        out: dict[str, Any] = {}
        # A key written here overrides a merged one; only a key written twice is an error.
        pairs = [p for p in node.value if id(p[0]) in own]
        pairs += [p for p in node.value if id(p[0]) not in own]
        for key_node, value_node in pairs:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, ptr, "a mapping key must be a plain value")
                continue
            key = str(key_node.value)
            child = f"{ptr}/{escape_pointer_token(key)}"
            if key in out:
                if id(key_node) in own:
                    first_line = self.keys[child][0]
                    self.problem(key_node, child,
                                 f"duplicate key {key!r} (first on line {first_line})")
                continue
            self.keys[child] = _position(key_node.start_mark)
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node: yaml.Node, ptr: str) -> Any:
        self._charge(node, len(node.value))
        try:
            value = self.loader.construct_object(node, deep=True)
        except NumberError as exc:
            self.refuse(node, ptr, str(exc))
            return None
        except yaml.YAMLError as exc:
            self.refuse(node, ptr, f"unsupported YAML value: {_first_line(exc)}")
            return None
        if not isinstance(value, _JSON_SCALARS) or (
                isinstance(value, float) and not math.isfinite(value)):
            self.refuse(node, ptr, f"{brief(str(node.value))!r} is not a JSON value")
            return None
        return value


def parse_manifest_yaml(text: str, file: str) -> YamlDoc:
    """Parse one YAML document whose root must be a mapping.

    Raises ManifestError when nothing usable comes out (syntax error, empty file,
    a root that is not a mapping); recoverable problems are kept in ``problems``.
    """
    if len(text) > MAX_SOURCE_CHARS:
        raise ManifestError([Problem(file, *text_position(text, MAX_SOURCE_CHARS),
                                     f"the file is too big: {len(text)} characters, at most "
                                     f"{MAX_SOURCE_CHARS}")])
    loader: _JsonLoader | None = None
    builder: _Builder | None = None
    try:
        loader = _JsonLoader(text)  # checks every character first: ReaderError
        root = loader.get_single_node()
        if root is None:
            raise ManifestError([Problem(file, 1, 1, "the file is empty; expected a mapping")])
        if not isinstance(root, yaml.MappingNode):
            line, col = _position(root.start_mark)
            raise ManifestError([Problem(file, line, col, "the top level must be a mapping")])
        builder = _Builder(loader, file)
        value = builder.build(root, "")
    except yaml.reader.ReaderError as exc:
        raise ManifestError([Problem(file, *text_position(text, exc.position),
                                     _unprintable(exc.character))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where: tuple[int | None, int | None] = _position(mark) if mark else (None, None)
        message = f"invalid YAML: {_first_line(exc)}"
        raise ManifestError([Problem(file, *where, message)]) from exc
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(file, None, None, f"invalid YAML: {exc}")]) from exc
    except RecursionError:  # the composer and the builder recurse once per nesting level
        # where the builder was, else how far the parser had read
        last = builder.last if builder else None
        mark = last.start_mark if last else loader.get_mark() if loader else None
        deep: tuple[int | None, int | None] = _position(mark) if mark else (None, None)
        raise ManifestError([Problem(file, *deep, "the YAML is nested too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDoc(value, builder.values, builder.keys, tuple(builder.problems),
                   frozenset(builder.refused))


def decode_source(data: bytes, file: str) -> str:
    """A manifest's bytes as text; ManifestError at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8")
        line, column = text_position(before, len(before))
        raise ManifestError([Problem(file, line, column, f"the file is not UTF-8: byte "
                                     f"0x{data[exc.start]:02x} ({exc.reason})")]) from None


_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def text_position(text: str, index: int) -> Position:
    """The 1-based line and column of ``text[index]``, counted as PyYAML counts them."""
    line, start = 1, 0
    for found in _BREAK.finditer(text, 0, index):
        line, start = line + 1, found.end()
    return line, index - start - text.count("\ufeff", start, index) + 1


def _unprintable(code: int) -> str:
    return (f"invalid YAML: the character U+{code:04X} is not allowed (YAML takes printable "
            f"characters only; a double-quoted string may hold it escaped: \"\\u{code:04X}\")")


def _position(mark: Any) -> Position:
    return (mark.line + 1, mark.column + 1)


def _first_line(exc: yaml.YAMLError) -> str:
    """PyYAML's problem text without the quoted source excerpt."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [exc.context, exc.problem]
        return ", ".join(p for p in parts if p) or str(exc).splitlines()[0]
    return str(exc).splitlines()[0]
