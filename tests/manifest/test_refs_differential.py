"""Random trees of embedded resources: base URIs, anchors and references, loaded the way a
port schema is, give the reference library's verdict.

tests/manifest/test_schema_refs.py checks each rule of base-URI and anchor resolution
once; here they meet in combination. A schema embeds up to four resources, each under
the root or under another one, with an absolute ``$id`` (http, https, urn, tag) or, below
an http(s) base, a relative one (``sub/x.json``, ``../y.json``, ``/abs/z.json``, ``q/``,
an empty fragment); anchors in the draft's spelling (``$anchor``, ``"$id": "#a"``,
``"id": "#a"``); and references from each resource to later ones, written as the
absolute URI, a relative or absolute-path reference, a bare fragment, an anchor, or a
JSON pointer (escaped keys, and pointers that cross into an embedded resource). A second
family extends a recursive tree through ``$dynamicRef`` (2020-12) and ``$recursiveRef``
(2019-09), with the extension behind a relative ``$id``; a third puts the tree, and
sometimes the extension, in files beside the manifest.

The verdict must be jsonschema's on the schema as written (where jsonschema can evaluate
it) and on the schema as the server publishes it, alone (always); no value may go
unjudged ("could not check").
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import jsonschema
import pytest
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import specification_with

from service.manifest.schemas import compile_schema

SEEDS = range(8)
SCHEMAS_PER_SEED = 40
VALUES_PER_SCHEMA = 12
DRAFTS: dict[str, tuple[type[Validator], str]] = {
    "2020-12": (jsonschema.Draft202012Validator,
                "https://json-schema.org/draft/2020-12/schema"),
    "2019-09": (jsonschema.Draft201909Validator,
                "https://json-schema.org/draft/2019-09/schema"),
    "7": (jsonschema.Draft7Validator, "http://json-schema.org/draft-07/schema#"),
    "6": (jsonschema.Draft6Validator, "http://json-schema.org/draft-06/schema#"),
    "4": (jsonschema.Draft4Validator, "http://json-schema.org/draft-04/schema#"),
}
MODERN = {"2020-12", "2019-09"}
ROOT_IDS = ["http://example.com/root.json", "https://example.com/a/b/root.json",
            "urn:example:root", "http://example.com/", "tag:example.com,2024:root"]
ABSOLUTE_IDS = ["http://other.org/x.json", "urn:uuid:deadbeef-1234-5678-9abc-def012345678",
                "https://example.com/a/c/d.json", "http://example.com/z/", "urn:example:other"]
# relative to an http(s) base only: against a URN, resolution is left to each library
RELATIVE_IDS = ["sub.json", "sub/x.json", "../y.json", "/abs/z.json", "q/", "w.json",
                "./v.json", "sub/../u.json", "t.json?x=1"]
FILE_NAMES = ["a.json", "sub/b.json", "sub/deep/c.json", "d e.json"]
FILE_IDS = ["https://files.org/a.json", "urn:example:file", "http://example.com/x/y.json"]
KEYS = ["r{}", "r{}/x", "r{}~y", "r{} z", "r{}%"]  # $defs keys: pointers escape them
NAMES = ["a", "b", "c"]
SCALARS = [0, 1, 2, 3, 5, 1.5, -1, "", "a", "ab", "abc", None, True, False]


class Resource:
    """An embedded resource: its URI (None: the root without $id), body and anchors."""

    def __init__(self, uri: str | None, body: dict[str, Any]) -> None:
        self.uri = uri
        self.body = body
        self.anchors: list[str] = []


class Resources:
    """One random schema of one draft: resources, anchors, then references between them."""

    def __init__(self, rnd: random.Random, draft: str) -> None:
        self.rnd = rnd
        self.draft = draft
        self.id_keyword = "id" if draft == "4" else "$id"
        self.defs = "$defs" if draft in MODERN else "definitions"

    def schema(self) -> dict[str, Any]:
        rnd = self.rnd
        root: dict[str, Any] = {"$schema": DRAFTS[self.draft][1]}
        root_uri = rnd.choice(ROOT_IDS) if rnd.random() < 0.75 else None
        if root_uri:
            root[self.id_keyword] = root_uri
        resources = [Resource(root_uri, root)]
        for index in range(rnd.randint(1, 4)):
            resource = self.embed(rnd.choice(resources), index, {r.uri for r in resources})
            if resource is not None:
                resources.append(resource)
        for resource in resources:
            if rnd.random() < 0.5:
                self.anchor(resource)
        for index, resource in enumerate(resources):  # only to later ones: no cycles
            for _ in range(rnd.randint(0, 2)):
                if index + 1 < len(resources):
                    target = rnd.choice(resources[index + 1:])
                    self.place({"$ref": self.reference(resource.uri, target)}, resource.body)
        return root

    def embed(self, parent: Resource, index: int, taken: set[str | None]) -> Resource | None:
        """A resource embedded in ``parent``; None when its URI is taken (two resources of
        one URI are an error the specification leaves undefined)."""
        rnd = self.rnd
        relative = parent.uri is not None and parent.uri.startswith("http") and rnd.random() < 0.65
        written = rnd.choice(RELATIVE_IDS if relative else ABSOLUTE_IDS)
        uri = urljoin(parent.uri, written) if relative and parent.uri else written
        if uri in taken:
            return None
        if self.draft != "2020-12" and rnd.random() < 0.15:
            written += "#"  # an empty fragment names the same resource
        body = {**self.leaf(), self.id_keyword: written}
        parent.body.setdefault(self.defs, {})[rnd.choice(KEYS).format(index)] = body
        return Resource(uri, body)

    def anchor(self, resource: Resource) -> None:
        name = f"an{self.rnd.randint(0, 9)}"
        spelled = {"$anchor": name} if self.draft in MODERN else {self.id_keyword: f"#{name}"}
        resource.body.setdefault(self.defs, {})[f"anchor_{name}"] = {**self.leaf(), **spelled}
        resource.anchors.append(name)

    def reference(self, base: str | None, target: Resource) -> str:
        """A reference to ``target`` (or into it) as written at ``base``."""
        rnd = self.rnd
        assert target.uri is not None  # only the root may have none, and it is first
        fragment = ""
        if target.anchors and rnd.random() < 0.35:
            fragment = f"#{rnd.choice(target.anchors)}"
        elif target.body.get(self.defs) and rnd.random() < 0.3:
            fragment = "#" + self.pointer(target.body)
        if base is None:
            return target.uri + fragment
        if base == target.uri and fragment and rnd.random() < 0.6:
            return fragment
        at, to = urlsplit(base), urlsplit(target.uri)
        if (at.scheme, at.netloc) == (to.scheme, to.netloc) and at.scheme.startswith("http") \
                and not to.query and rnd.random() < 0.6:
            if rnd.random() < 0.3:
                return to.path + fragment  # an absolute-path reference
            relative = posixpath.relpath(to.path, posixpath.dirname(at.path) or "/")
            relative += "/" if to.path.endswith("/") and relative != "." else ""
            relative = "./" if relative == "." else relative
            if urljoin(base, relative) == target.uri:
                return relative + fragment
        return target.uri + fragment

    def pointer(self, body: dict[str, Any]) -> str:
        """A JSON pointer to one of ``body``'s definitions, sometimes one level further into
        a resource embedded there."""
        key = self.rnd.choice(list(body[self.defs]))
        path = f"/{self.defs}/{_token(key)}"
        inner = body[self.defs][key]
        if inner.get(self.defs) and self.rnd.random() < 0.5:
            path += f"/{self.defs}/{_token(self.rnd.choice(list(inner[self.defs])))}"
        return path

    def place(self, ref: dict[str, Any], body: dict[str, Any]) -> None:
        """Put a reference where it applies to the value or to a part of it."""
        slot = self.rnd.choice(["allOf", "anyOf", "properties", "items", "not"])
        if slot == "allOf":
            body.setdefault("allOf", []).append(ref)
        elif slot == "anyOf":
            body.setdefault("anyOf", []).extend([ref, self.leaf()])
        elif slot == "properties":
            body.setdefault("properties", {})[self.rnd.choice(NAMES)] = ref
        else:
            body.setdefault(slot, ref)

    def leaf(self) -> dict[str, Any]:
        return self.rnd.choice([
            {"type": self.rnd.choice(["string", "number", "integer", "object", "array"])},
            {"minimum": self.rnd.choice([0, 2, 5])}, {"maximum": self.rnd.choice([0, 2])},
            {"maxLength": self.rnd.choice([0, 1, 2])}, {"required": [self.rnd.choice(NAMES)]},
            {"enum": self.rnd.sample([1, 2, "a", None, True, [], {}], 3)}, {}])

    def value(self, depth: int = 0) -> Any:
        kind = self.rnd.random()
        if depth > 2 or kind < 0.5:
            return self.rnd.choice(SCALARS)
        if kind < 0.75:
            return [self.value(depth + 1) for _ in range(self.rnd.randint(0, 3))]
        return {self.rnd.choice(NAMES): self.value(depth + 1)
                for _ in range(self.rnd.randint(0, 3))}


def _token(key: str) -> str:
    """``key`` as a JSON pointer token in a URI fragment."""
    return quote(key.replace("~", "~0").replace("/", "~1"), safe="~!$&'()*+,;=:@")


def extended_tree(rnd: random.Random) -> tuple[str, dict[str, Any]]:
    """A recursive tree schema and an extension of it, the root referring to either: the
    tree's children are checked by the outermost resource with the dynamic anchor."""
    draft = rnd.choice(["2020-12", "2019-09"])
    base = rnd.choice(["http://example.com/root.json", "https://example.com/a/root.json", None])
    tree_id = rnd.choice(["tree.json", "https://trees.org/tree.json", "sub/tree.json"])
    extension_id = rnd.choice(["ext.json", "https://trees.org/ext.json", "other/ext.json"])
    if base is None:
        tree_id, extension_id = "https://trees.org/tree.json", "https://trees.org/ext.json"
    tree_uri = urljoin(base or "", tree_id)
    if draft == "2020-12":
        tree_anchor = {"$dynamicAnchor" if rnd.random() < 0.85 else "$anchor": "node"}
        recurse = {"$dynamicRef": rnd.choice(["#node", f"{tree_uri}#node"])}
        extension_anchor = {"$dynamicAnchor": rnd.choice(["node", "other"])}
    else:
        tree_anchor = {"$recursiveAnchor": rnd.random() < 0.85}
        recurse = {"$recursiveRef": "#"}
        extension_anchor = {"$recursiveAnchor": rnd.random() < 0.8}
    data = [{"type": "integer"}, {"type": "string"}, {"minimum": 2}, {}, {"maxLength": 1}]
    tree = {"$id": tree_id, **tree_anchor, "type": "object",
            "properties": {"data": rnd.choice(data),
                           "children": {"type": "array", "items": recurse}}}
    extension = {"$id": extension_id, **extension_anchor, "$ref": tree_uri,
                 "properties": {"data": rnd.choice(data)}}
    if rnd.random() < 0.4:
        extension["required"] = ["data"]
    root: dict[str, Any] = {"$schema": DRAFTS[draft][1],
                            "$defs": {"tree": tree, "extension": extension}}
    if base is None:
        root["$ref"] = rnd.choice(["https://trees.org/ext.json", "https://trees.org/tree.json"])
    else:
        root |= {"$id": base, "$ref": rnd.choice([extension_id, tree_id])}
    return draft, root


def tree_value(rnd: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rnd.random() < 0.15:
        return rnd.choice([1, "a", None, "abc", [], {}])
    value: dict[str, Any] = {}
    if rnd.random() < 0.8:
        value["data"] = rnd.choice([1, 2, 3, "a", "ab", None, 1.5, True])
    if rnd.random() < 0.6:
        value["children"] = [tree_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return value


def schemas_in_files(rnd: random.Random, folder: Path) -> tuple[Resources, dict[str, Any],
                                                                dict[str, Any]]:
    """Up to three files beside the manifest, some with an $id of their own, referring to
    one another by path or by $id (into their definitions and anchors too); in drafts 4-7,
    some made of a $ref (its siblings ignored, an $id included). The manifest's schema
    refers to them by either, and names each by its path last: where a file is first named
    must not matter. The files are written; the schema and the files are returned."""
    generator = Resources(rnd, rnd.choice(list(DRAFTS)))
    id_keyword, defs = generator.id_keyword, generator.defs
    files, anchors = _new_files(generator)

    def reference(source: str, target: str) -> str | None:
        """``target`` as written in ``source`` (None: it has an $id, paths would not be
        relative to the file)."""
        body = files[target]
        fragment = rnd.choice(["", f"#/{defs}/x", f"#/{defs}/y~1z",
                               *(f"#{a}" for a in anchors[target])])
        if id_keyword in body and rnd.random() < 0.5:
            return body[id_keyword] + fragment
        if source and id_keyword in files[source]:
            return None
        return posixpath.relpath(target, posixpath.dirname(source) or ".") + fragment

    names = list(files)
    for index, source in enumerate(names):  # to later files only: no cycles
        for target in rnd.sample(names[index + 1:], min(len(names) - index - 1, 2)):
            ref = reference(source, target)
            if ref is None:
                continue
            if generator.draft not in MODERN and rnd.random() < 0.25:
                files[source].pop(id_keyword, None)  # beside $ref it would be ignored
                files[source]["$ref"] = ref.split("#")[0] if ref.startswith("http") else ref
            else:
                generator.place({"$ref": ref}, files[source])
    root: dict[str, Any] = {"$schema": DRAFTS[generator.draft][1], **generator.leaf()}
    for target in rnd.choices(names, k=rnd.randint(1, 3)):
        ref = reference("", target)
        assert ref is not None
        generator.place({"$ref": ref}, root)
    root.setdefault("allOf", []).extend({"not": {"not": {"$ref": name}}} for name in names)
    _write(folder, files)
    return generator, root, files


def _new_files(generator: Resources) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Documents by file name, with definitions and perhaps an $id and an anchor; the
    anchors of each."""
    rnd = generator.rnd
    files: dict[str, Any] = {}
    anchors: dict[str, list[str]] = {}
    for name in rnd.sample(FILE_NAMES, rnd.randint(1, 3)):
        document = Resource(None, {"$schema": DRAFTS[generator.draft][1], **generator.leaf(),
                                   generator.defs: {"x": generator.leaf(),
                                                    "y/z": generator.leaf()}})
        own = rnd.choice(FILE_IDS)
        if rnd.random() < 0.4 and all(f.get(generator.id_keyword) != own
                                      for f in files.values()):
            document.body[generator.id_keyword] = own
        if rnd.random() < 0.5:
            generator.anchor(document)
        files[name], anchors[name] = document.body, document.anchors
    return files, anchors


def _write(folder: Path, files: dict[str, Any]) -> None:
    for name, contents in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(contents))


def tree_in_files(rnd: random.Random, folder: Path) -> tuple[str, dict[str, Any],
                                                             dict[str, Any]]:
    """The recursive tree in a file beside the manifest (with or without an $id of its
    own), the extension in the manifest or in a file of its own: the files are written,
    the manifest's schema and the files are returned."""
    draft = rnd.choice(["2020-12", "2019-09"])
    meta = DRAFTS[draft][1]
    if draft == "2020-12":
        anchor, recurse = {"$dynamicAnchor": "node"}, {"$dynamicRef": "#node"}
        extension_anchor = {"$dynamicAnchor": rnd.choice(["node", "other"])}
    else:
        anchor, recurse = {"$recursiveAnchor": True}, {"$recursiveRef": "#"}
        extension_anchor = {"$recursiveAnchor": rnd.random() < 0.8}
    data = [{"type": "integer"}, {"type": "string"}, {"minimum": 2}, {"maxLength": 1}]
    tree = {"$schema": meta, **anchor, "type": "object",
            "properties": {"data": rnd.choice(data),
                           "children": {"type": "array", "items": recurse}}}
    if rnd.random() < 0.4:
        tree["$id"] = rnd.choice(["https://trees.org/tree.json", "urn:example:tree"])
    tree_file = rnd.choice(["tree.json", "sub/tree.json", "a b/tree.json"])
    extension = {"$schema": meta, **extension_anchor, "properties": {"data": rnd.choice(data)},
                 **rnd.choice([{}, {"required": ["data"]}, {"unevaluatedProperties": False}])}
    files = {tree_file: tree}
    if rnd.random() < 0.5:
        extension_file = rnd.choice(["ext.json", "sub/ext.json"])
        extension["$ref"] = posixpath.relpath(tree_file, posixpath.dirname(extension_file))
        files[extension_file] = extension
        root = {"$schema": meta, "$ref": rnd.choice([extension_file, tree_file])}
    else:
        root = {**extension, "$ref": tree_file}
    _write(folder, files)
    return draft, root, files


def differences(schema: dict[str, Any], draft: str, values: list[Any], manifest: Path,
                files: dict[str, Any] | None = None) -> list[str]:
    """Where the loaded schema's verdicts are not the reference's (``files``: the documents
    beside the manifest it refers to)."""
    compiled, issues = compile_schema(schema, manifest)
    assert compiled is not None, f"refused at load: {issues}\n  {json.dumps(schema)}"
    published = compiled.schema
    alone = validator_for(published)(published, registry=Registry())  # nothing retrievable
    written = DRAFTS[draft][0](schema)
    if files is not None:  # as written: the manifest's schema at its file's URI, beside the files
        spec = specification_with(DRAFTS[draft][1])
        documents = {(manifest.parent / name).as_uri(): contents
                     for name, contents in files.items()}
        documents |= {contents["$id"]: contents for contents in files.values()
                      if "$id" in contents}
        documents[manifest.as_uri()] = schema
        registry: Registry[Any] = Registry().with_resources(
            (uri, spec.create_resource(contents)) for uri, contents in documents.items())
        written = DRAFTS[draft][0]({"$ref": manifest.as_uri()}, registry=registry)
    found = []
    for value in values:
        errors = compiled.validator.errors(value)
        ours = not errors
        assert not any("could not check" in e["message"] for e in errors), (schema, value)
        expected = [alone.is_valid(value)]
        # where jsonschema cannot evaluate the schema as written (see test_schema_refs.py)
        with contextlib.suppress(NoSuchResource, Unresolvable):
            expected.append(written.is_valid(value))
        if any(e != ours for e in expected):
            found.append(f"draft {draft}: ours {ours}, reference {expected}, errors {errors}"
                         f"\n  schema {json.dumps(schema)}\n  value {value!r}")
    return found


Case = tuple[str, dict[str, Any], list[Any], "dict[str, Any] | None"]


def embedded_resources(rnd: random.Random, folder: Path) -> Case:
    generator = Resources(rnd, rnd.choice(list(DRAFTS)))
    schema = generator.schema()
    return generator.draft, schema, [generator.value() for _ in range(VALUES_PER_SCHEMA)], None


def dynamic_extension(rnd: random.Random, folder: Path) -> Case:
    draft, schema = extended_tree(rnd)
    return draft, schema, [tree_value(rnd) for _ in range(VALUES_PER_SCHEMA)], None


def references_across_files(rnd: random.Random, folder: Path) -> Case:
    generator, schema, files = schemas_in_files(rnd, folder)
    values = [generator.value() for _ in range(VALUES_PER_SCHEMA)]
    return generator.draft, schema, values, files


def dynamic_extension_across_files(rnd: random.Random, folder: Path) -> Case:
    draft, schema, files = tree_in_files(rnd, folder)
    return draft, schema, [tree_value(rnd) for _ in range(VALUES_PER_SCHEMA)], files


# each family with how many schemas a seed makes of it (files take longer)
FAMILIES = [(embedded_resources, SCHEMAS_PER_SEED), (dynamic_extension, SCHEMAS_PER_SEED),
            (references_across_files, SCHEMAS_PER_SEED // 2),
            (dynamic_extension_across_files, SCHEMAS_PER_SEED // 2)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("family", "count"), FAMILIES, ids=[f.__name__ for f, _ in FAMILIES])
def test_the_verdict_is_the_reference_s(family: Any, count: int, seed: int,
                                        tmp_path: Path) -> None:
    rnd = random.Random(seed)
    found = []
    for index in range(count):
        folder = tmp_path / str(index)
        folder.mkdir()
        draft, schema, values, files = family(rnd, folder)
        found += differences(schema, draft, values, folder / "actor.yaml", files)
    assert not found, f"seed {seed}, {len(found)}:\n" + "\n".join(found[:5])
