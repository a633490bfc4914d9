"""Walking a schema the way a validator does: every subschema, with its base URI."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urldefrag, urljoin

import referencing.jsonschema
from jsonschema.protocols import Validator
from referencing import Registry, Resource, Specification

from service.manifest.yamlnodes import escape_pointer_token


def specification_of(dialect: type[Validator]) -> Specification[Any]:
    """The ``referencing`` rules (ids, anchors, subschemas) of a dialect."""
    return referencing.jsonschema.specification_with(
        dialect.META_SCHEMA["$schema"], default=referencing.jsonschema.DRAFT202012)


def ref_keywords(spec: Specification[Any]) -> tuple[str, ...]:
    """The keywords of a dialect that hold a reference to resolve."""
    if spec.name == "draft2020-12":
        return ("$ref", "$dynamicRef")
    if spec.name == "draft2019-09":
        return ("$ref", "$recursiveRef")
    return ("$ref",)



@dataclass(frozen=True)
class Node:
    contents: dict[str, Any]
    base: str  # the base URI in force here (this subschema's own id applied)
    pointer: str  # inside its document


def nodes(document: Any, spec: Specification[Any], base: str) -> Iterator[Node]:
    """Every object subschema of ``document`` in order, with its base URI."""
    pointers = _pointers(document)
    yield from _walk(Resource(contents=document, specification=spec),  # type: ignore[call-arg]
                     base, pointers)


def _walk(resource: Resource[Any], base: str, pointers: dict[int, str]) -> Iterator[Node]:
    own = resource.id()
    if own is not None:
        base = urljoin(base, own)
    if isinstance(resource.contents, dict):
        yield Node(resource.contents, base, pointers.get(id(resource.contents), ""))
    for sub in resource.subresources():
        if isinstance(sub.contents, dict | bool):
            yield from _walk(sub, base, pointers)


def patterns(document: Any, spec: Specification[Any]) -> Iterator[tuple[str, str]]:
    """Every regular expression of ``document`` a validator compiles (``pattern``, the names
    of ``patternProperties``), with the pointer of its keyword; also in what a reference
    makes a schema of (``{"$ref": "#/$defs/a/const"}`` validates with that const)."""
    for node in reachable_nodes(document, spec):
        yield from node_patterns(node)


def node_patterns(node: Node) -> Iterator[tuple[str, str]]:
    """The regular expressions of one subschema (see :func:`patterns`)."""
    if isinstance(node.contents.get("pattern"), str):
        yield f"{node.pointer}/pattern", node.contents["pattern"]
    for name in node.contents.get("patternProperties") or ():
        yield f"{node.pointer}/patternProperties", name


def reachable_nodes(document: Any, spec: Specification[Any]) -> Iterator[Node]:
    """Every object subschema of ``document`` (:func:`nodes`), and of every part of it that
    a reference resolves to, once each. Pointers are into ``document``."""
    root = Resource(contents=document, specification=spec)  # type: ignore[call-arg]
    base = root.id() or ""
    uncrawled: Registry[Any] = Registry().with_resource(base, root)
    registry: Registry[Any] | None = None  # crawled on the first reference, once
    pointers = _pointers(document)
    seen: set[int] = set()
    pending = [(document, base)]
    while pending:
        part, part_base = pending.pop()
        for node in nodes(part, spec, part_base):
            if id(node.contents) in seen:
                continue
            seen.add(id(node.contents))
            yield Node(node.contents, node.base, pointers.get(id(node.contents), node.pointer))
            for keyword in ref_keywords(spec):
                ref = node.contents.get(keyword)
                if not isinstance(ref, str):
                    continue
                try:  # referencing fails on some schemas (property_dependencies_first)
                    if registry is None:
                        registry = uncrawled.crawl()
                    target = registry.resolver(node.base).lookup(ref).contents
                except Exception:  # a metaschema, or checked elsewhere (unresolvable_refs)
                    continue
                if isinstance(target, dict) and id(target) not in seen:
                    pending.append((target, urldefrag(urljoin(node.base, ref))[0]))


UNEVALUATED = ("unevaluatedProperties", "unevaluatedItems")
# What unevaluated_depth says when the schema is too deep to walk: costly, surely.
DEEPEST = 64


def unevaluated_depth(document: Any, spec: Specification[Any]) -> int:
    """The most schemas with ``unevaluatedProperties`` or ``unevaluatedItems`` nested in one
    another along a path of subschemas and references. Each such keyword evaluates the
    subschemas beside it again to see what they evaluated, so a value's cost can double at
    each level. A reference back up the path (a recursive schema) counts once: recursion
    follows the value, and costs what the value's size does."""
    resolver = _root_resolver(document, spec)
    if resolver is None:
        return 0
    known: dict[int, int] = {}
    walking: set[int] = set()

    def depth(resource: Resource[Any], resolver: Any) -> int:
        contents = resource.contents
        if not isinstance(contents, dict) or id(contents) in walking:
            return 0
        if id(contents) in known:
            return known[id(contents)]
        walking.add(id(contents))
        below = [depth(sub, resolver.in_subresource(sub)) for sub in resource.subresources()]
        below += [depth(spec.create_resource(target.contents), target.resolver)
                  for target in _targets(contents, resolver, spec)]
        walking.discard(id(contents))
        known[id(contents)] = found = max(below, default=0) + any(
            keyword in contents for keyword in UNEVALUATED)
        return found

    try:
        return depth(spec.create_resource(document), resolver)
    except RecursionError:
        return DEEPEST


# Subschemas by where they apply: at the value's own location (in place), at an item of an
# array, or at a property of an object (or at its name). In a list of entries by index
# (prefixItems, items' list form) or a map by name (properties), one entry at most applies
# to an item or a property; the rest may all apply together.
IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas",
            "dependencies")
ITEM = ("prefixItems", "items", "additionalItems", "contains", "unevaluatedItems")
PROPERTY = ("properties", "patternProperties", "additionalProperties",
            "unevaluatedProperties", "propertyNames")
MAPS = ("dependentSchemas", "dependencies", "properties", "patternProperties")
MOST_EVALUATIONS = 1 << 62  # a count stops growing here (and the schema is costly anyway)


def evaluations(document: Any, spec: Specification[Any]) -> tuple[int, int]:
    """At most how many subschemas evaluate one location of a value, counted with
    multiplicity; and at most how many times a recursion enters again at one location.

    A schema as written evaluates a location a few times (a ``$ref``, an ``allOf`` of
    mixins). One that reaches a definition along several paths evaluates it once per path:
    two references to the next level, at each of k levels, make 2**k evaluations, for a
    one-character value as for a big one. A reference back up the path counts once here
    (recursion follows the value), and once in the second count: a recursion entered
    twice at one location (``anyOf: [{items: {$ref: "#"}}, {items: {$ref: "#"}}]``)
    doubles at each level of the value, one entered once (a tree) costs what the value's
    size does. Upper bounds: applicators that may apply together are added up; of the
    entries of ``properties`` or ``prefixItems``, the worst counts."""
    if not isinstance(document, dict):
        return 1, 0
    try:
        found = _Evaluations(spec).count(document, _root_resolver(document, spec))
    except RecursionError:
        return MOST_EVALUATIONS, MOST_EVALUATIONS
    return max(found[:3]), max(found[3:])


class _Evaluations:
    """The counts of :func:`evaluations` for each subschema, once each. A count is six
    numbers: evaluations at the location, at the worst item below it and at the worst
    property below it; then the same three for entries back up the path."""

    def __init__(self, spec: Specification[Any]) -> None:
        self.spec = spec
        self.known: dict[int, tuple[int, ...]] = {}
        self.walking: set[int] = set()  # on the path being counted

    def count(self, contents: Any, resolver: Any) -> tuple[int, ...]:
        if not isinstance(contents, dict):
            return (1, 0, 0, 0, 0, 0)
        if id(contents) in self.walking:
            return (1, 0, 0, 1, 0, 0)
        if id(contents) in self.known:
            return self.known[id(contents)]
        self.walking.add(id(contents))
        with contextlib.suppress(Exception):  # an id referencing cannot read: checked elsewhere
            resolver = resolver and resolver.in_subresource(self.spec.create_resource(contents))
        in_place = [self.count(sub, resolver) for keyword in IN_PLACE
                    for sub in _subschemas(contents, keyword)]
        if resolver is not None:
            in_place += [self.count(target.contents, target.resolver)
                         for target in _targets(contents, resolver, self.spec)]
        own = (1, *self._below(contents, resolver, slice(3)),
               0, *self._below(contents, resolver, slice(3, 6)))
        self.walking.discard(id(contents))
        self.known[id(contents)] = found = tuple(
            min(mine + sum(c[i] for c in in_place), MOST_EVALUATIONS)
            for i, mine in enumerate(own))
        return found

    def _below(self, contents: dict[str, Any], resolver: Any, part: slice) -> tuple[int, int]:
        """The ``part`` of the count at the worst item below, and at the worst property."""
        return (self._worst(contents, resolver, part, ITEM),
                self._worst(contents, resolver, part, PROPERTY))

    def _worst(self, contents: dict[str, Any], resolver: Any, part: slice,
               keywords: tuple[str, ...]) -> int:
        each, together = 0, 0
        for keyword in keywords:
            for sub in _subschemas(contents, keyword):
                worst = max(self.count(sub, resolver)[part])
                if keyword == "properties" or isinstance(contents[keyword], list):
                    each = max(each, worst)
                else:
                    together += worst
        return each + together


def _root_resolver(document: Any, spec: Specification[Any]) -> Any:
    """A resolver at ``document``'s root, every resource in it known; None where
    ``referencing`` cannot read it (it fails on some schemas: property_dependencies_first)."""
    try:
        root = Resource(contents=document, specification=spec)  # type: ignore[call-arg]
        registry: Registry[Any] = Registry().with_resource(root.id() or "", root)
        return registry.crawl().resolver(root.id() or "")
    except Exception:
        return None


def _targets(contents: dict[str, Any], resolver: Any, spec: Specification[Any]) -> Iterator[Any]:
    """What the references of ``contents`` resolve to (``referencing``'s Resolved); one that
    does not resolve (a metaschema, or checked elsewhere: unresolvable_refs) is skipped."""
    for keyword in ref_keywords(spec):
        if isinstance(ref := contents.get(keyword), str):
            try:
                target = resolver.lookup(ref)
            except Exception:
                continue
            yield target


def _subschemas(contents: dict[str, Any], keyword: str) -> Iterator[Any]:
    """The subschemas under ``keyword``: one, a list, or a map of them (the property lists
    of a ``dependencies`` are not subschemas)."""
    value = contents.get(keyword)
    if isinstance(value, dict) and keyword in MAPS:
        yield from (v for v in value.values() if isinstance(v, dict | bool))
    elif isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict | bool))
    elif isinstance(value, dict | bool):
        yield value


def property_dependencies_first(document: Any) -> Any:
    """``document`` with, in each ``dependencies``, the property lists before the schemas.

    ``referencing`` judges all the values of a draft 4-7 ``dependencies`` by its first
    one: a schema first and a list after would crash it (during a call, too). Key
    order means nothing in JSON, so the lists go first; changed in place.
    """
    if isinstance(document, list):
        for item in document:
            property_dependencies_first(item)
    elif isinstance(document, dict):
        for value in document.values():
            property_dependencies_first(value)
        deps = document.get("dependencies")
        if isinstance(deps, dict) and any(isinstance(v, list) for v in deps.values()):
            document["dependencies"] = dict(
                sorted(deps.items(), key=lambda item: not isinstance(item[1], list)))
    return document


def _pointers(document: Any, ptr: str = "", into: dict[int, str] | None = None) -> dict[int, str]:
    """id() of every object and array of ``document`` -> its JSON pointer."""
    into = {} if into is None else into
    if isinstance(document, dict):
        into[id(document)] = ptr
        for key, value in document.items():
            _pointers(value, f"{ptr}/{escape_pointer_token(key)}", into)
    elif isinstance(document, list):
        into[id(document)] = ptr
        for i, value in enumerate(document):
            _pointers(value, f"{ptr}/{i}", into)
    return into
