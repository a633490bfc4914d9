"""Base URIs and anchors, rule by rule from the specification text.

JSON Schema 2020-12 core §8.2 ($id, $anchor, $dynamicAnchor, $ref, $dynamicRef) and
§9 (base URI, embedded resources, compound documents); 2019-09 ($recursiveRef);
draft 7/6 (``$id``, ``"$id": "#foo"``, ``$ref`` siblings ignored) and draft 4
(``id``). Each test loads a port schema the way the server does, checks the
verdicts of the port's validator, and checks that the published schema, alone
(plain jsonschema, nothing retrievable), gives the same verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import validator_for
from referencing import Registry

from service.errors import ManifestError
from service.manifest.loader import load_manifest
from service.manifest.model import Port
from service.settings import Settings

D2020 = "https://json-schema.org/draft/2020-12/schema"
D2019 = "https://json-schema.org/draft/2019-09/schema"
D7 = "http://json-schema.org/draft-07/schema#"
D6 = "http://json-schema.org/draft-06/schema#"
D4 = "http://json-schema.org/draft-04/schema#"


def port(folder: Path, schema: Any, files: dict[str, Any] | None = None,
         roots: tuple[Path, ...] = ()) -> Port:
    """The ``input`` port of a manifest in ``folder`` whose schema is ``schema``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, contents in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(contents))
    (folder / "actor.py").write_text("async def process(context):\n    return None\n")
    (folder / "actor.yaml").write_text(json.dumps({  # JSON is YAML
        "id": "actor", "language": "python", "script": "actor.py",
        "inports": {"input": {"schema": schema}}}))
    return load_manifest(folder / "actor.yaml", Settings(schema_roots=roots)).inports["input"]


def refused(folder: Path, schema: Any, files: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        port(folder, schema, files)
    return [p.message for p in caught.value.problems]


def verdicts(p: Port, values: list[Any]) -> list[bool]:
    """Each value's verdict; the published schema alone must give the same ones."""
    ours = [p.errors(v) == [] for v in values]
    published = json.loads(json.dumps(p.schema))
    alone = validator_for(published)(published, registry=Registry())  # nothing retrievable
    assert [alone.is_valid(v) for v in values] == ours
    assert "file:" not in json.dumps(published)  # no host path leaves the server
    return ours


# --- §9.1.1: the initial base URI is the retrieval URI (here: the manifest's file) ---


def test_a_relative_ref_without_id_resolves_against_the_manifest_file(tmp_path: Path) -> None:
    p = port(tmp_path, {"$ref": "defs/int.json"}, {"defs/int.json": {"type": "integer"}})
    assert verdicts(p, [1, "1"]) == [True, False]
    assert p.schema["$ref"] == "urn:actor-sandbox:schema:defs/int.json"


def test_a_ref_inside_a_file_resolves_against_that_file(tmp_path: Path) -> None:
    files = {"a/outer.json": {"$ref": "inner.json"}, "a/inner.json": {"type": "string"},
             "inner.json": {"type": "integer"}}  # a decoy beside the manifest
    assert verdicts(port(tmp_path, {"$ref": "a/outer.json"}, files), ["x", 1]) == [True, False]


# --- §8.2.1: $id sets the base URI of its resource; relative ids resolve on the outer base ---


def test_an_embedded_id_shadows_a_file_of_the_same_name(tmp_path: Path) -> None:
    schema = {"$id": "http://example.com/root.json", "$ref": "int.json",
              "$defs": {"int": {"$id": "int.json", "type": "integer"}}}
    p = port(tmp_path, schema, {"int.json": {"type": "string"}})
    assert verdicts(p, [1, "1"]) == [True, False]
    assert p.schema == schema  # nothing read from disk: the schema is published unchanged


def test_relative_ids_nest(tmp_path: Path) -> None:
    schema = {"$id": "http://example.com/a/b/root.json", "$ref": "c/leaf.json",
              "$defs": {"dir": {"$id": "c/", "$defs": {"leaf": {"$id": "leaf.json",
                                                                  "type": "boolean"}}}}}
    assert verdicts(port(tmp_path, schema), [True, 1]) == [True, False]


def test_a_relative_id_without_a_root_id_stays_in_the_document(tmp_path: Path) -> None:
    # base = the manifest's file, so "int.json" is the file URI beside it: the embedded one wins
    schema = {"$ref": "int.json", "$defs": {"int": {"$id": "int.json", "type": "integer"}}}
    p = port(tmp_path, schema)
    assert verdicts(p, [1, "1"]) == [True, False]
    assert p.schema["$ref"] == p.schema["$defs"]["int"]["$id"] == \
        "urn:actor-sandbox:schema:int.json"


def test_urn_ids(tmp_path: Path) -> None:
    urn = "urn:uuid:deadbeef-1234-ffff-ffff-4321feebdaed"
    schema = {"$id": urn,
              "properties": {"a": {"$ref": "#/$defs/s"}, "b": {"$ref": f"{urn}#/$defs/s"},
                             "c": {"$ref": "urn:example:n"}},
              "$defs": {"s": {"type": "string"}, "n": {"$id": "urn:example:n", "type": "null"}}}
    p = port(tmp_path, schema)
    assert verdicts(p, [{"a": "x", "b": "y", "c": None}, {"a": 1}, {"b": 1}, {"c": 0}]) == [
        True, False, False, False]


def test_an_absolute_path_ref_resolves_against_the_authority(tmp_path: Path) -> None:
    schema = {"$id": "http://example.com/ref/absref.json", "$ref": "/absref/foobar.json",
              "$defs": {"a": {"$id": "http://example.com/absref/foobar.json", "type": "number"},
                        "b": {"$id": "http://example.com/ref/absref/foobar.json",
                              "type": "string"}}}
    assert verdicts(port(tmp_path, schema), [1, "a"]) == [True, False]


def test_a_file_keeps_its_own_id_and_refs_in_it_resolve_against_it(tmp_path: Path) -> None:
    files = {"order.json": {"$id": "https://example.com/schemas/order.json",
                            "$ref": "line.json",
                            "$defs": {"line": {"$id": "line.json", "type": "integer"}}}}
    p = port(tmp_path, {"$ref": "order.json"}, files)
    assert verdicts(p, [1, "1"]) == [True, False]
    assert p.schema["$ref"] == "https://example.com/schemas/order.json"


@pytest.mark.parametrize("path_first", [True, False])
def test_a_file_may_be_named_by_its_id_before_its_path(tmp_path: Path,
                                                       path_first: bool) -> None:
    """The order of the keywords does not matter: a reference by a file's $id resolves
    once any reference by the file's path has read it, before or after. (The $id first
    was refused as a remote document.)"""
    files = {"a.json": {"$id": "https://files.org/a.json", "type": "integer"}}
    refs = [{"properties": {"a": {"$ref": "a.json"}}},
            {"properties": {"n": {"$ref": "https://files.org/a.json"}}}]
    p = port(tmp_path, {"allOf": refs if path_first else refs[::-1]}, files)
    assert verdicts(p, [{"a": 1, "n": 1}, {"a": "1"}, {"n": "1"}]) == [True, False, False]


# --- §8.2.2 / §9.2: anchors are plain-name fragments, scoped to their resource ---


def test_anchor(tmp_path: Path) -> None:
    schema = {"$ref": "#num", "$defs": {"n": {"$anchor": "num", "type": "number"}}}
    assert verdicts(port(tmp_path, schema), [1, "x"]) == [True, False]


def test_an_anchor_belongs_to_its_resource(tmp_path: Path) -> None:
    schema = {"$id": "http://example.com/root", "$ref": "#num",
              "$defs": {"n": {"$id": "other", "$anchor": "num", "type": "number"}}}
    assert refused(tmp_path, schema) == [
        "inports.input.schema.$ref: $ref '#num' points to nothing (no anchor 'num' there)"]
    schema["$ref"] = "other#num"
    assert verdicts(port(tmp_path, schema), [1, "x"]) == [True, False]


def test_an_anchor_in_a_file(tmp_path: Path) -> None:
    files = {"types.json": {"$defs": {"s": {"$anchor": "short", "maxLength": 2}}}}
    p = port(tmp_path, {"$ref": "types.json#short"}, files)
    assert verdicts(p, ["ab", "abc"]) == [True, False]


def test_a_missing_anchor_or_pointer_is_refused_at_load(tmp_path: Path) -> None:
    assert refused(tmp_path, {"$ref": "#nope"}) == [
        "inports.input.schema.$ref: $ref '#nope' points to nothing (no anchor 'nope' there)"]
    assert refused(tmp_path, {"properties": {"a": {"$ref": "#/$defs/nope"}}}) == [
        "inports.input.schema.properties.a.$ref: $ref '#/$defs/nope' points to nothing"]


# --- §8.2.3.2: $dynamicRef resolves through the dynamic scope ---


TREE = {"$id": "https://example.com/tree", "$dynamicAnchor": "node", "type": "object",
        "properties": {"data": True,
                       "children": {"type": "array", "items": {"$dynamicRef": "#node"}}}}
STRICT_TREE = {"$id": "https://example.com/strict-tree", "$dynamicAnchor": "node",
               "$ref": "tree", "unevaluatedProperties": False, "$defs": {"tree": TREE}}


def test_dynamic_ref_extends_a_recursive_schema(tmp_path: Path) -> None:
    strict = port(tmp_path / "s", STRICT_TREE)
    loose = port(tmp_path / "l", TREE)
    typo = {"children": [{"daat": 1}]}
    assert verdicts(loose, [typo, {"children": [{"data": 1}]}]) == [True, True]
    assert verdicts(strict, [typo, {"children": [{"data": 1}]}]) == [False, True]


def test_dynamic_ref_across_files(tmp_path: Path) -> None:
    tree = {key: value for key, value in TREE.items() if key != "$id"}
    strict = {"$dynamicAnchor": "node", "$ref": "tree.json", "unevaluatedProperties": False}
    p = port(tmp_path, strict, {"tree.json": tree})
    assert p.schema["$id"] == "urn:actor-sandbox:schema:actor.yaml"  # the root joins the scope
    assert verdicts(p, [{"children": [{"daat": 1}]}, {"children": [{"data": 1}]}]) == [
        False, True]


def test_the_dynamic_scope_keeps_each_resource_s_own_base(tmp_path: Path) -> None:
    """§8.2.3.2 and §9.2: the extension's relative $id is resolved against the root's base,
    where it is embedded, not against the tree's, which the call goes through: the children
    are checked by the extension, at every depth. (jsonschema 4.26, given this schema as it
    stands, looks the extension up at https://trees.org/other/ext.json from the
    grandchildren on, and raises NoSuchResource; the bundled schema has no relative $id.)"""
    tree = {"$id": "https://trees.org/tree.json", "$dynamicAnchor": "node", "type": "object",
            "properties": {"data": {"maxLength": 1},
                           "children": {"type": "array", "items": {"$dynamicRef": "#node"}}}}
    extension = {"$id": "other/ext.json", "$dynamicAnchor": "node",
                 "$ref": "https://trees.org/tree.json", "required": ["data"]}
    p = port(tmp_path, {"$schema": D2020, "$id": "https://example.com/a/root.json",
                        "$ref": "other/ext.json", "$defs": {"tree": tree, "ext": extension}})
    deep = {"data": "a", "children": [{"data": "b", "children": [{"data": "c"}, {}]}]}
    assert verdicts(p, [{"data": "a", "children": [{}]}, {"data": "a", "children": [{"data": "b"}]},
                        {"data": "ab"}, deep]) == [False, True, False, False]
    deep["children"][0]["children"].pop()
    assert verdicts(p, [deep]) == [True]


def test_an_unresolvable_dynamic_ref_is_refused_at_load(tmp_path: Path) -> None:
    assert refused(tmp_path, {"$dynamicRef": "#/$defs/none"}) == [
        "inports.input.schema.$dynamicRef: $dynamicRef '#/$defs/none' points to nothing"]


def test_recursive_ref_2019_09(tmp_path: Path) -> None:
    tree = {"$schema": D2019, "$id": "https://example.com/tree", "$recursiveAnchor": True,
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$recursiveRef": "#"}}}}
    strict = {"$schema": D2019, "$id": "https://example.com/strict", "$recursiveAnchor": True,
              "$ref": "tree", "unevaluatedProperties": False, "$defs": {"tree": tree}}
    assert verdicts(port(tmp_path, strict), [{"children": [{"x": 1}]}, {"children": [{}]}]) == [
        False, True]


def test_recursive_ref_across_files(tmp_path: Path) -> None:
    """2019-09 §8.2.4.2: "$recursiveRef": "#" in a file is still "#" once the file is
    embedded: the children go back to the outermost resource with "$recursiveAnchor": true,
    the manifest's schema, which requires "data". (Written as the file's own URI, it was a
    plain $ref to the file: the children went unchecked by the root.)"""
    tree = {"$schema": D2019, "$recursiveAnchor": True, "type": "object",
            "properties": {"data": {"type": "integer"},
                           "children": {"type": "array", "items": {"$recursiveRef": "#"}}}}
    strict = {"$schema": D2019, "$recursiveAnchor": True, "$ref": "sub/tree.json",
              "required": ["data"]}
    p = port(tmp_path, strict, {"sub/tree.json": tree})
    assert p.schema["$defs"]["tree"]["properties"]["children"]["items"] == {
        "$recursiveRef": "#"}
    assert verdicts(p, [{"data": 2, "children": [{}]}, {"data": 2, "children": [{"data": 3}]},
                        {"children": []}]) == [False, True, False]


# --- no network: a document that is not embedded and not a local file is refused ---


def test_a_remote_ref_is_refused_at_load(tmp_path: Path) -> None:
    assert refused(tmp_path, {"$id": "http://example.com/root.json", "$ref": "other.json"}) == [
        "inports.input.schema.$ref: $ref 'other.json' names http://example.com/other.json, "
        "which is not in this schema; remote documents are never fetched: embed it "
        "(a subschema with that $id) or save it as a file beside the manifest or under "
        "schema_roots"]


def test_a_metaschema_ref_needs_no_network(tmp_path: Path) -> None:
    p = port(tmp_path, {"$ref": "https://json-schema.org/draft/2020-12/schema"})
    assert verdicts(p, [{"type": "string"}, {"type": 5}]) == [True, False]


# --- drafts 7 and 6: "$id": "#foo" is a location-independent identifier; $ref siblings ---


@pytest.mark.parametrize("dialect", [D7, D6])
def test_location_independent_id(tmp_path: Path, dialect: str) -> None:
    schema = {"$schema": dialect, "allOf": [{"$ref": "#foo"}],
              "definitions": {"A": {"$id": "#foo", "type": "integer"}}}
    assert verdicts(port(tmp_path, schema), [1, "a"]) == [True, False]


@pytest.mark.parametrize("dialect", [D7, D6])
def test_location_independent_id_in_a_file(tmp_path: Path, dialect: str) -> None:
    files = {"defs.json": {"$schema": dialect,
                           "definitions": {"A": {"$id": "#foo", "type": "integer"}}}}
    p = port(tmp_path, {"$schema": dialect, "$ref": "defs.json#foo"}, files)
    assert verdicts(p, [1, "a"]) == [True, False]


def test_draft7_ref_ignores_a_sibling_id(tmp_path: Path) -> None:
    schema = {"$schema": D7, "$id": "http://example.com/base/",
              "definitions": {"foo": {"$id": "http://example.com/foo.json", "type": "string"},
                              "base_foo": {"$id": "foo.json", "type": "number"}},
              "allOf": [{"$id": "http://example.com/", "$ref": "foo.json"}]}
    assert verdicts(port(tmp_path, schema), [1, "a"]) == [True, False]


def test_draft7_file_whose_root_is_a_ref(tmp_path: Path) -> None:
    files = {"alias.json": {"$schema": D7, "$ref": "#/definitions/n",
                            "definitions": {"n": {"type": "number"}}}}
    p = port(tmp_path, {"$schema": D7, "items": {"$ref": "alias.json"}}, files)
    assert verdicts(p, [[1], ["a"]]) == [True, False]


# --- draft 4: id ---


def test_draft4_id(tmp_path: Path) -> None:
    schema = {"$schema": D4, "id": "http://example.com/root.json",
              "properties": {"a": {"$ref": "#foo"}, "b": {"$ref": "item.json"}},
              "definitions": {"A": {"id": "#foo", "type": "integer"},
                              "B": {"id": "item.json", "type": "string"}}}
    p = port(tmp_path, schema)
    assert verdicts(p, [{"a": 1, "b": "x"}, {"a": "x"}, {"b": 1}]) == [True, False, False]


def test_draft4_file_gets_an_id(tmp_path: Path) -> None:
    p = port(tmp_path, {"$schema": D4, "$ref": "n.json"}, {"n.json": {"type": "number"}})
    assert verdicts(p, [1, "a"]) == [True, False]
    assert p.schema["definitions"]["n"]["id"] == "urn:actor-sandbox:schema:n.json"


def test_mixed_dependencies_do_not_break_resolution(tmp_path: Path) -> None:
    # referencing judges every value of a draft 4-7 "dependencies" by its first one
    schema = {"$schema": D7, "dependencies": {"a": {"required": ["c"]}, "b": ["a"]}}
    assert verdicts(port(tmp_path, schema), [{"a": 1, "c": 1}, {"a": 1}, {"b": 1}]) == [
        True, False, False]
