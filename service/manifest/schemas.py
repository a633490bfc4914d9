"""Port and config schemas: checked against their metaschema, bundled, compiled once.

A manifest's schemas may ``$ref`` JSON files, resolved relative to the manifest
(``{$ref: ../schemas/order.json}``). The wire needs schemas a host can use
alone, so every referenced file is copied into the schema's ``$defs`` and each
``$ref`` is rewritten to point there (``#/$defs/order/...``). The validator is
compiled from that bundled schema, so the server validates with exactly what
it publishes.

Limits of the bundling, kept on purpose: files are identified by their path
(a ``$id`` inside a referenced file is dropped), every referenced file must use
the port schema's dialect, only ``$ref`` is rewritten (not ``$dynamicRef``),
and refs to the JSON Schema metaschemas are left as they are.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import referencing.jsonschema
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable, Unretrievable

from service.manifest.yamlnodes import escape_pointer_token, pointer

DEFAULT_DIALECT = Draft202012Validator
# Keywords whose members are named subschemas, and keywords holding plain data.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})
_DATA_KEYWORDS = frozenset({"const", "enum", "examples", "default"})


@dataclass(frozen=True)
class SchemaIssue:
    """A problem of one schema; ``pointer`` is where inside that schema to report it."""

    pointer: str
    message: str


@dataclass(frozen=True)
class CompiledSchema:
    schema: Any  # self-contained: no $ref leaves it (except to the JSON Schema metaschemas)
    validator: Validator


def compile_schema(
    schema: Any, manifest: Path, ref_roots: Sequence[Path] = ()
) -> tuple[CompiledSchema | None, list[SchemaIssue]]:
    """Check ``schema`` (refs relative to ``manifest``), bundle it and compile its validator.

    A ``$ref`` may read only files below the manifest's folder or one of ``ref_roots``.
    """
    dialect = dialect_of(schema)
    if dialect is None:
        return None, [SchemaIssue("/$schema", f"unknown $schema {schema['$schema']!r}")]
    issues = metaschema_issues(schema, dialect)
    if issues:
        return None, issues
    roots = tuple(r.resolve() for r in (manifest.resolve().parent, *ref_roots))
    bundler = _Bundler(dialect, manifest.resolve().as_uri(), schema, roots)
    bundled = bundler.run()
    if bundler.issues:
        return None, bundler.issues
    return CompiledSchema(bundled, dialect(bundled, registry=SPECIFICATIONS)), []


def dialect_of(schema: Any, default: type[Validator] = DEFAULT_DIALECT) -> type[Validator] | None:
    """The validator class for the schema's ``$schema`` (else ``default``); None if unknown."""
    if isinstance(schema, dict) and "$schema" in schema:
        if not isinstance(schema["$schema"], str):
            return None
        return validator_for(schema, default=None)  # type: ignore[arg-type]
    return default


def metaschema_issues(schema: Any, dialect: type[Validator]) -> list[SchemaIssue]:
    """Every way ``schema`` fails its metaschema."""
    meta = dialect(dialect.META_SCHEMA, format_checker=dialect.FORMAT_CHECKER)
    errors = sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
    return [SchemaIssue(pointer(*e.absolute_path), _message(e)) for e in errors]


def _message(error: ValidationError) -> str:
    """The error's message; for "not valid under any of the given schemas", the likeliest why."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        best = best_match(error.context)
        if best is not None:
            return best.message
    return error.message


@dataclass
class _Bundler:
    """Copies every referenced file into the root's ``$defs`` and rewrites the refs."""

    dialect: type[Validator]
    root_uri: str
    root: Any
    ref_roots: tuple[Path, ...]
    issues: list[SchemaIssue] = field(default_factory=list)
    embedded: dict[str, str] = field(default_factory=dict)  # file URI -> its $defs key
    defs: dict[str, Any] = field(default_factory=dict)
    registry: Registry[Any] = field(init=False)

    def __post_init__(self) -> None:
        spec = referencing.jsonschema.specification_with(
            self.dialect.META_SCHEMA["$schema"], default=referencing.jsonschema.DRAFT202012)
        # attrs classes: mypy cannot see their keyword arguments
        registry: Registry[Any] = Registry(retrieve=_file_retriever(spec, self.ref_roots))  # type: ignore[call-arg]
        self.registry = registry.with_resource(
            self.root_uri, Resource.from_contents(self.root, default_specification=spec))

    def run(self) -> Any:
        root = copy.deepcopy(self.root)
        self._rewrite(root, self.root_uri, origin=None)
        if self.defs and isinstance(root, dict):
            root["$defs"] = {**root.get("$defs", {}), **self.defs}
        return root

    def _rewrite(self, doc: Any, doc_uri: str, origin: str | None) -> None:
        """Rewrite the refs of one document; ``origin`` is the root ref that pulled it in."""
        for ptr, holder in _refs(doc):
            where = origin if origin is not None else f"{ptr}/$ref"
            new_ref = self._target(holder["$ref"], doc_uri, where)
            if new_ref is not None:
                holder["$ref"] = new_ref

    def _target(self, ref: str, doc_uri: str, where: str) -> str | None:
        """The rewritten ref, or None after recording why it does not resolve."""
        target = urljoin(doc_uri, ref)
        target_doc, fragment = urldefrag(target)
        if target_doc in SPECIFICATIONS or f"{target_doc}#" in SPECIFICATIONS:
            return target
        key = None
        if target_doc != self.root_uri:
            key = self._embed(target_doc, ref, where)
            if key is None:
                return None
        try:
            self.registry.resolver(base_uri=doc_uri).lookup(ref)
        except Unresolvable:
            self.issues.append(SchemaIssue(where, f"$ref {ref!r} points to nothing"))
            return None
        if key is None or (fragment and not fragment.startswith("/")):
            return f"#{fragment}"  # the root itself, or an anchor (anchors carry over)
        return f"#/$defs/{escape_pointer_token(key)}{fragment}"

    def _embed(self, doc_uri: str, ref: str, where: str) -> str | None:
        """Copy the file at ``doc_uri`` into ``$defs`` (once); its key, or None."""
        if doc_uri in self.embedded:
            return self.embedded[doc_uri]
        try:
            retrieved = self.registry.get_or_retrieve(doc_uri)
        except (Unretrievable, NoSuchResource) as exc:
            self.issues.append(SchemaIssue(where, f"$ref {ref!r} cannot be read: {_cause(exc)}"))
            return None
        self.registry = retrieved.registry
        contents = retrieved.value.contents
        name = _display(_uri_path(doc_uri))
        if not self._check_document(contents, name, where):
            return None
        key = self._new_key(doc_uri)
        self.embedded[doc_uri] = key
        body = copy.deepcopy(contents)
        if isinstance(body, dict):
            body.pop("$id", None)  # the copy must stay part of the root resource
            body.pop("$schema", None)
        self.defs[key] = body
        self._rewrite(body, doc_uri, where)
        return key

    def _check_document(self, contents: Any, name: str, where: str) -> bool:
        if not isinstance(contents, dict | bool):
            self.issues.append(SchemaIssue(where, f"{name} is not a JSON Schema"))
            return False
        if dialect_of(contents, self.dialect) is not self.dialect:
            self.issues.append(SchemaIssue(
                where, f"{name} uses another $schema than the schema referring to it"))
            return False
        found = metaschema_issues(contents, self.dialect)
        self.issues += [SchemaIssue(where, f"{name}: {i.pointer or '/'}: {i.message}")
                        for i in found]
        return not found

    def _new_key(self, doc_uri: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(urlsplit(doc_uri).path).stem) or "schema"
        taken = set(self.defs) | set(self.root.get("$defs", {}) if isinstance(self.root, dict)
                                     else {})
        key, n = stem, 1
        while key in taken:
            n += 1
            key = f"{stem}_{n}"
        return key


def _refs(node: Any, ptr: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema holding a ``$ref`` string, with its pointer (data keywords skipped)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, f"{ptr}/{i}")
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$ref"), str):
        yield ptr, node
    for key, value in node.items():
        child = f"{ptr}/{escape_pointer_token(key)}"
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _refs(sub, f"{child}/{escape_pointer_token(name)}")
        else:
            yield from _refs(value, child)


class RefOutsideRoots(Exception):
    """A $ref names a file outside the manifest's folder and the schema roots."""


def _file_retriever(spec: Any, roots: tuple[Path, ...]) -> Any:
    """A ``referencing`` retrieve function that reads local JSON files below ``roots`` only."""

    def retrieve(uri: str) -> Resource[Any]:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # no network: only files beside the manifests
        path = Path(url2pathname(parts.path)).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            raise RefOutsideRoots(path)
        contents = json.loads(path.read_text(encoding="utf-8"))
        return Resource.from_contents(contents, default_specification=spec)

    return retrieve


def _cause(exc: BaseException) -> str:
    """Why a retrieval failed, in words (the innermost cause)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, FileNotFoundError):
        return f"no such file {_display(Path(exc.filename))}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    if isinstance(exc, RefOutsideRoots):
        return (f"{_display(exc.args[0])} is outside the manifest's folder and the "
                "settings' schema_roots")
    if isinstance(exc, NoSuchResource):
        return "only local files can be referenced"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _uri_path(file_uri: str) -> Path:
    return Path(url2pathname(urlsplit(file_uri).path))


def _display(path: Path) -> str:
    """A path relative to the working directory when possible."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)
