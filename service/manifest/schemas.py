"""Port and config schemas: checked, their references resolved and bundled, compiled once.

References resolve the way JSON Schema says (2020-12 §8.2 and §9; the ``id``/``$id``
rules of drafts 4, 6 and 7): a relative ``$ref`` is resolved against the base URI
in force where it stands, which is the ``$id`` of the nearest enclosing schema
resource, else the document's retrieval URI. A port schema's retrieval URI is its
manifest's file, so ``{$ref: ../schemas/order.json}`` reads a file beside it. The
``referencing`` library does the resolving, with the dialect's own rules
(anchors, location-independent ``"$id": "#foo"`` in drafts 6/7 and ``"id"`` in 4,
``$dynamicAnchor``, ``$recursiveAnchor``); every reference is looked up once here,
at load, so a schema that loads never fails to resolve during a call.

Only JSON files below the manifest's folder or a ``schema_roots`` folder are ever
read; any other document (``http:``...) must be embedded in the schema itself
(a subschema with that ``$id``), as nothing is fetched over the network.

The wire needs schemas a host can use alone, so the published schema is a
Compound Schema Document (2020-12 §9.3): each file read is embedded under the
root's ``$defs`` (``definitions`` before 2019-09) as a schema resource of its
own, with an ``$id``. Host file paths never leave the server: every ``file:``
URI (an embedded file, a ``$ref`` to it, a relative ``$id`` under the manifest's
folder) is rewritten to ``urn:actor-sandbox:schema:<path>``, the path relative to
the folder the documents share. A schema that uses no file keeps its shape.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry, Resource, Specification
from referencing.exceptions import (
    NoSuchAnchor,
    NoSuchResource,
    PointerToNowhere,
    Unresolvable,
    Unretrievable,
)

from service.manifest import ecma
from service.manifest.files import MAX_SCHEMA_FILE_BYTES, read_text
from service.manifest.numbers import NumberError, parse_float, parse_int
from service.manifest.schemawalk import (
    Node,
    nodes,
    patterns,
    property_dependencies_first,
    ref_keywords,
    specification_of,
)
from service.manifest.validation import SchemaValidator
from service.manifest.yamlnodes import escape_pointer_token, pointer

DEFAULT_DIALECT = Draft202012Validator
BUNDLE_URN = "urn:actor-sandbox:schema:"
_LEGACY = frozenset({"draft-04", "draft-06", "draft-07"})  # $ref there ignores its siblings


@dataclass(frozen=True)
class SchemaIssue:
    """A problem of one schema; ``pointer`` is where inside that schema to report it."""

    pointer: str
    message: str


@dataclass(frozen=True)
class CompiledSchema:
    schema: Any  # self-contained: every reference resolves inside it (or to a metaschema)
    validator: SchemaValidator


def compile_schema(
    schema: Any, manifest: Path, ref_roots: Sequence[Path] = (), *,
    format_assertion: bool = False, timeout_s: float = 1.0,
) -> tuple[CompiledSchema | None, list[SchemaIssue]]:
    """Check ``schema`` (its retrieval URI is ``manifest``), bundle it and compile it.

    A ``$ref`` may read only files below the manifest's folder or one of ``ref_roots``.
    """
    dialect = dialect_of(schema)
    if dialect is None:
        return None, [SchemaIssue("/$schema", f"unknown $schema {schema['$schema']!r}")]
    issues = metaschema_issues(schema, dialect)
    if issues:
        return None, issues
    roots = tuple(r.resolve() for r in (manifest.resolve().parent, *ref_roots))
    schema = property_dependencies_first(copy.deepcopy(schema))
    bundler = _Bundler(dialect, manifest.resolve().as_uri(), roots)
    bundler.collect(schema)
    bundled = bundler.bundle(schema) if not bundler.issues else None
    issues = bundler.issues or [
        SchemaIssue("", f"the bundled schema does not resolve {ref!r} (please report this)")
        for ref in unresolvable_refs(bundled, dialect)]
    # each document's patterns were checked; a reference across documents may reach more
    issues = issues or pattern_issues(bundled, dialect)
    if issues:
        return None, issues
    validator = SchemaValidator(bundled, dialect, format_assertion, timeout_s)
    return CompiledSchema(bundled, validator), []


def dialect_of(schema: Any, default: type[Validator] = DEFAULT_DIALECT) -> type[Validator] | None:
    """The validator class for the schema's ``$schema`` (else ``default``); None if unknown."""
    if isinstance(schema, dict) and "$schema" in schema:
        if not isinstance(schema["$schema"], str):
            return None
        return validator_for(schema, default=None)  # type: ignore[arg-type]
    return default


def metaschema_issues(schema: Any, dialect: type[Validator]) -> list[SchemaIssue]:
    """Every way ``schema`` fails its metaschema, its patterns read as ECMA-262."""
    meta = dialect(dialect.META_SCHEMA, format_checker=ecma.format_checker(dialect))
    errors = sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        return [SchemaIssue(pointer(*e.absolute_path), _message(e)) for e in errors]
    return embedded_dialect_issues(schema, dialect) or pattern_issues(schema, dialect)


def embedded_dialect_issues(schema: Any, dialect: type[Validator]) -> list[SchemaIssue]:
    """Subschemas whose ``$schema`` names another dialect than the document's: jsonschema
    reads such a part in its own dialect, jsonschema-rs in the root's (refused, as a
    referenced file of another dialect is)."""
    return [SchemaIssue(node.pointer + "/$schema", "a subschema's $schema other than the "
                        "schema's own is not supported: keep one dialect per schema")
            for node in nodes(schema, specification_of(dialect), "")
            if node.pointer and "$schema" in node.contents
            and dialect_of(node.contents, dialect) is not dialect]


def pattern_issues(schema: Any, dialect: type[Validator]) -> list[SchemaIssue]:
    """Every pattern a validator would compile that is not ECMA-262, and not only where the
    metaschema looks (draft 4's does not check the names of ``patternProperties``)."""
    issues = []
    for where, text in patterns(schema, specification_of(dialect)):
        try:
            ecma.compiled(text)
        except ecma.PatternError as exc:
            issues.append(SchemaIssue(where, f"{text!r} is not a 'regex': {exc}"))
    return issues


def unresolvable_refs(schema: Any, dialect: type[Validator]) -> list[str]:
    """The references of ``schema`` that do not resolve inside it (no file, no network)."""
    spec = specification_of(dialect)
    root = Resource(contents=schema, specification=spec)  # type: ignore[call-arg]
    base = root.id() or ""
    registry = Registry().with_resource(base, root).combine(SPECIFICATIONS).crawl()
    missing = []
    for node in nodes(schema, spec, base):
        for keyword in ref_keywords(spec):
            ref = node.contents.get(keyword)
            if isinstance(ref, str) and _lookup_problem(registry, node.base, ref) is not None:
                missing.append(ref)
    return missing


def _message(error: ValidationError) -> str:
    """The error's message; for "not valid under any of the given schemas", the likeliest why."""
    if error.validator == "format" and isinstance(error.cause, ecma.PatternError):
        return f"{error.message}: {error.cause}"
    if error.validator in ("anyOf", "oneOf") and error.context:
        best = best_match(error.context)
        if best is not None:
            return best.message
    return error.message


def _target(base: str, ref: str) -> tuple[str, str]:
    """(document URI, fragment) a reference names, resolved as ``referencing`` does."""
    if ref.startswith("#"):
        return base, ref[1:]
    uri, fragment = urldefrag(urljoin(base, ref))
    return uri, fragment


def _lookup_problem(registry: Registry[Any], base: str, ref: str) -> str | None:
    """Why ``ref`` does not resolve from ``base`` ("" when it plainly points to nothing)."""
    try:
        registry.resolver(base_uri=base).lookup(ref)
    except NoSuchAnchor as exc:
        return f" (no anchor {exc.anchor!r} there)"
    except PointerToNowhere:
        return ""
    except Unresolvable:
        return " (no such schema)"
    return None


def _is_metaschema(uri: str) -> bool:
    return uri in SPECIFICATIONS or f"{uri}#" in SPECIFICATIONS


def _is_file(uri: str) -> bool:
    return urlsplit(uri).scheme == "file"


def _shown(uri: str) -> str:
    """A URI as an error shows it: files by their path."""
    return _display(_uri_path(uri)) if _is_file(uri) else uri


# --- resolving and bundling ---


@dataclass
class _Bundler:
    """Resolves every reference of a port schema, then builds its self-contained form."""

    dialect: type[Validator]
    root_uri: str  # the manifest's file: the root's retrieval URI
    ref_roots: tuple[Path, ...]
    issues: list[SchemaIssue] = field(default_factory=list)
    docs: dict[str, Any] = field(default_factory=dict)  # file read -> its contents, in order
    canonical: dict[str, str] = field(default_factory=dict)  # file read -> its own $id
    refused: set[str] = field(default_factory=set)
    wrapped: set[str] = field(default_factory=set)  # files embedded as {$id, allOf: [file]}
    needs_root_id: bool = False
    absolute_ids: bool = False  # write every relative $id resolved (see bundle)
    spec: Specification[Any] = field(init=False)
    registry: Registry[Any] = field(init=False)
    id_keyword: str = field(init=False)  # "id" in draft 4
    defs_keyword: str = field(init=False)  # where files are embedded
    common: Path = field(init=False)  # the folder the published file names are relative to

    def __post_init__(self) -> None:
        self.spec = specification_of(self.dialect)
        self.id_keyword = "id" if self.spec.name == "draft-04" else "$id"
        self.defs_keyword = "definitions" if self.spec.name in _LEGACY else "$defs"

    # collect: read every file referenced, look every reference up

    def collect(self, root: Any) -> None:
        retrieve = _file_retriever(self.spec, self.ref_roots)
        # attrs classes: mypy cannot see their keyword arguments
        registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]
        resource = Resource(contents=root, specification=self.spec)  # type: ignore[call-arg]
        self.registry = registry.with_resource(self.root_uri, resource).combine(
            SPECIFICATIONS).crawl()
        queue: list[tuple[str, Any, str | None]] = [(self.root_uri, root, None)]
        # References to an $id not (yet) known: a file read later may have it, whatever the
        # order of the keywords that name the file and the $id.
        later: list[tuple[str, str, Node, str, bool]] = []
        while queue:
            uri, contents, origin = queue.pop(0)
            for node in nodes(contents, self.spec, uri):
                for keyword in ref_keywords(self.spec):
                    ref = node.contents.get(keyword)
                    if isinstance(ref, str):
                        where = origin or f"{node.pointer}/{escape_pointer_token(keyword)}"
                        self._check_ref(keyword, ref, node, where, queue,
                                        in_file=origin is not None, later=later)
        for keyword, ref, node, where, in_file in later:
            self._check_ref(keyword, ref, node, where, queue, in_file)

    def _check_ref(self, keyword: str, ref: str, node: Node, where: str,
                   queue: list[tuple[str, Any, str | None]], in_file: bool,
                   later: list[tuple[str, str, Node, str, bool]] | None = None) -> None:
        doc, _ = _target(node.base, ref)
        if _is_metaschema(doc) or doc in self.refused:
            return
        shown = f"{_shown(node.base)}: {node.pointer or '/'}: " if in_file else ""
        if doc not in self.registry:
            if not _is_file(doc):
                if later is not None:  # a file read later may have this $id: checked then
                    later.append((keyword, ref, node, where, in_file))
                    return
                self.issues.append(SchemaIssue(where, (
                    f"{shown}{keyword} {ref!r} names {doc}, which is not in this schema; remote "
                    "documents are never fetched: embed it (a subschema with that $id) or "
                    "save it as a file beside the manifest or under schema_roots")))
                self.refused.add(doc)
                return
            if not self._read(doc, ref, where, shown):
                return
            queue.append((doc, self.docs[doc], where))
        problem = _lookup_problem(self.registry, node.base, ref)
        if problem is not None:
            self.issues.append(SchemaIssue(where, f"{shown}{keyword} {ref!r} points to nothing"
                                                  f"{problem}"))

    def _read(self, doc: str, ref: str, where: str, shown: str) -> bool:
        """Read the file ``doc`` into the registry; False (and an issue) if it cannot be."""
        try:
            retrieved = self.registry.get_or_retrieve(doc)
        except (Unretrievable, NoSuchResource) as exc:
            self.issues.append(SchemaIssue(where, f"{shown}$ref {ref!r} cannot be read: "
                                                  f"{_cause(exc)}"))
            self.refused.add(doc)
            return False
        contents = retrieved.value.contents
        if not self._check_document(contents, _display(_uri_path(doc)), where):
            self.refused.add(doc)
            return False
        self.registry = retrieved.registry.crawl()
        self.docs[doc] = contents
        if not isinstance(contents, dict) or (self.spec.name in _LEGACY and (
                "$ref" in contents or str(contents.get(self.id_keyword, "")).startswith("#"))):
            self.wrapped.add(doc)  # an $id there would be ignored (or is an anchor)
        own = retrieved.value.id()
        if own is not None:
            self.canonical[doc] = urljoin(doc, own)
        return True

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

    # bundle: the published, self-contained schema

    def bundle(self, root: Any) -> Any:
        self.common = _common_folder([_uri_path(u) for u in (self.root_uri, *self.docs)])
        # Both engines resolve the relative $id of a resource in the dynamic scope against the
        # wrong base (jsonschema from the second $dynamicRef down, jsonschema-rs when it
        # compiles), so a valid value was refused: with dynamic references, the published
        # schema has absolute ids only. Without, it keeps the ids as written.
        self.absolute_ids = _mentions([root, *self.docs.values()], "$dynamicRef", "$recursiveRef")
        out = copy.deepcopy(root)
        self._rewrite(out, self.root_uri)
        embedded = {_key(doc, i): self._embedded(doc) for i, doc in enumerate(self.docs)}
        if embedded and isinstance(out, dict):
            defs = out.setdefault(self.defs_keyword, {})
            for key, body in embedded.items():
                defs[_free_key(key, defs)] = body
        if isinstance(out, dict) and self._dynamic_root_without_id(out):
            self.needs_root_id = True  # else jsonschema leaves the root out of the dynamic scope
        if self.needs_root_id and isinstance(out, dict):
            out[self.id_keyword] = self._publish(self.root_uri)
        return out

    def _dynamic_root_without_id(self, root: dict[str, Any]) -> bool:
        return self.id_keyword not in root and _mentions(root, "$dynamicAnchor",
                                                         "$recursiveAnchor")

    def _embedded(self, doc: str) -> Any:
        body = copy.deepcopy(self.docs[doc])
        self._rewrite(body, doc)
        if doc in self.wrapped or not isinstance(body, dict):
            return {self.id_keyword: self._publish(doc), "allOf": [body]}
        return {self.id_keyword: self._publish(doc), **body} if self.id_keyword not in body \
            else body

    def _rewrite(self, document: Any, uri: str) -> None:
        """Rewrite the file URIs of a copied document in place (ids first seen as they were),
        and, with ``absolute_ids``, every other relative ``$id`` as the URI it resolves to."""
        for node in nodes(document, self.spec, uri):
            schema = node.contents
            own = Resource(contents=schema, specification=self.spec).id()  # type: ignore[call-arg]
            if own is not None and _is_file(node.base):
                schema[self.id_keyword] = self._publish(node.base)
            elif own is not None and own != node.base and self.absolute_ids:
                schema[self.id_keyword] = node.base
            for keyword in ref_keywords(self.spec):
                ref = schema.get(keyword)
                # "$recursiveRef" is defined for "#" alone (2019-09 §8.2.4.2.1): written as
                # the URI "#" names, the engines took it for a static $ref
                if isinstance(ref, str) and not (keyword == "$recursiveRef" and ref == "#"):
                    schema[keyword] = self._published_ref(ref, node.base)

    def _published_ref(self, ref: str, base: str) -> str:
        doc, fragment = _target(base, ref)
        if not _is_file(doc):
            return ref
        if doc == self.root_uri:
            if base == self.root_uri:
                return f"#{fragment}"
            self.needs_root_id = True
        if doc in self.wrapped and (not fragment or fragment.startswith("/")):
            fragment = f"/allOf/0{fragment}"
        published = self._publish(self.canonical.get(doc, doc))
        return f"{published}#{fragment}" if fragment else published

    def _publish(self, uri: str) -> str:
        """A file URI as the published schema names it (no host path); others unchanged."""
        if not _is_file(uri):
            return uri
        relative = Path(os.path.relpath(_uri_path(uri), self.common)).as_posix()
        return BUNDLE_URN + quote(relative, safe="/:@!$&'()*+,;=-._~")


def _mentions(document: Any, *keywords: str) -> bool:
    """Whether ``document`` has any of ``keywords`` as a key, anywhere. Walked, not written
    out and searched: ``json.dumps`` of a schema of megabytes is one call that holds the
    GIL, the event loop waiting, for as long (in the loader's thread)."""
    seen: set[int] = set()  # a YAML alias can make the same node appear twice
    waiting = [document]
    while waiting:
        node = waiting.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            if any(keyword in node for keyword in keywords):
                return True
            waiting.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            waiting.extend(v for v in node if isinstance(v, dict | list))
    return False


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([p.parent for p in paths]))


def _key(doc: str, index: int) -> str:
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in _uri_path(doc).stem)
    return stem or f"schema{index}"


def _free_key(key: str, taken: dict[str, Any]) -> str:
    name, n = key, 1
    while name in taken:
        n += 1
        name = f"{key}_{n}"
    return name


class RefOutsideRoots(Exception):
    """A $ref names a file outside the manifest's folder and the schema roots."""


def _file_retriever(spec: Specification[Any], roots: tuple[Path, ...]) -> Any:
    """A ``referencing`` retrieve function that reads local JSON files below ``roots`` only."""

    def retrieve(uri: str) -> Resource[Any]:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # no network, ever
        path = Path(url2pathname(parts.path)).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            raise RefOutsideRoots(path)
        contents = property_dependencies_first(read_json(path))
        return Resource.from_contents(contents, default_specification=spec)

    return retrieve


def read_json(path: Path) -> Any:
    """A schema file's JSON, its numbers held to what a double holds (numbers.py): no
    ``NaN``/``Infinity`` (which Python's json takes), no integer too large to convert."""
    return json.loads(read_text(path, MAX_SCHEMA_FILE_BYTES), parse_int=parse_int,
                      parse_float=parse_float, parse_constant=_not_json)


def _not_json(word: str) -> Any:
    raise NumberError(f"{word} is not a JSON number")


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
