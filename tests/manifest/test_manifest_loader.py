"""The loader: ActorDef shape, limits, $ref bundling, scripts, examples, paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.errors import ManifestError
from service.manifest.lint import lint_paths
from service.manifest.loader import (
    check_manifest,
    display_path,
    find_manifests,
    load_manifest,
    manifest_schema,
)
from service.manifest.model import Example, PoolSpec
from service.settings import Limits, LimitsMax, SandboxSettings, Settings

REPO = Path(__file__).resolve().parents[2]
PROCESS_PY = "async def process(context):\n    return None\n"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


def write(folder: Path, manifest: str, scripts: dict[str, str] | None = None,
          name: str = "actor.yaml") -> Path:
    """A manifest (and its scripts) in ``folder``; returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for script, text in (scripts or {"actor.py": PROCESS_PY}).items():
        (folder / script).write_text(text)
    (folder / name).write_text(manifest)
    return folder / name


def messages(path: Path, settings: Settings | None = None) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, settings or Settings())
    return [p.message for p in caught.value.problems]


BASE = "id: actor\nlanguage: python\nscript: actor.py\n"


def test_manifest_schema_is_valid_and_is_the_one_in_schemas() -> None:
    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert manifest_schema() == schema
    for name in ("limits", "pool", "config"):
        assert schema["properties"][name]["additionalProperties"] is False


def test_shipped_manifests_are_clean(in_repo: Path) -> None:
    assert lint_paths(["manifests"], Settings()) == []
    ids = [load_manifest(p, Settings()).id for p in find_manifests(["manifests"])]
    assert sorted(ids) == ["counter", "doubler", "doubler_js", "is_number_js", "next_weekday",
                          "order_total", "ticker"]


def test_doubler_descriptor_is_the_protocol_shape(in_repo: Path) -> None:
    actor = load_manifest("manifests/doubler/doubler.yaml", Settings())
    assert actor.descriptor() == {
        "id": "doubler",
        "language": "python",
        "description": "Doubles a number",
        "inports": {"input": {"schema": {"type": "number"},
                              "description": "the number to double", "required": True}},
        "outports": {"output": {"schema": {"type": "number"},
                                "description": "twice the input"}},
        "limits": {"cpus": 1, "memory_mb": 128, "timeout_s": 5, "network": False,
                   "pids": 64, "output_bytes": 1048576},
        "manifest": "manifests/doubler/doubler.yaml",
    }
    assert actor.script == REPO / "manifests" / "doubler" / "doubler.py"
    assert actor.manifest == REPO / "manifests" / "doubler" / "doubler.yaml"
    assert actor.root == REPO / "manifests" / "doubler"
    assert actor.entrypoint == "process"
    assert actor.pool == PoolSpec()
    assert json.loads(json.dumps(actor.descriptor())) == actor.descriptor()


# The origin README's examples, character for character (blank lines with spaces and all).
ORIGIN_PYTHON = (
    'import json\n'
    '\n'
    'async def process(context):\n'
    '    # Get input from a port\n'
    '    value = context.get_input("input", 0)\n'
    '    \n'
    '    # Process the value\n'
    '    result = value * 2\n'
    '    \n'
    '    # Send output to a port (via WebSocket RPC back to host)\n'
    '    await context.send_output("output", result)\n'
    '    \n'
    '    return {"status": "completed"}\n'
)
ORIGIN_JAVASCRIPT = (
    'async function process(context) {\n'
    '    // Get input from a port\n'
    '    const value = context.getInput("input", 0);\n'
    '    \n'
    '    // Process the value\n'
    '    const result = value * 2;\n'
    '    \n'
    '    // Send output to a port (via WebSocket RPC back to host)\n'
    '    await context.sendOutput("output", result);\n'
    '    \n'
    '    return { status: "completed" };\n'
    '}\n'
)


def test_doublers_are_the_origin_examples_verbatim() -> None:
    assert (REPO / "manifests" / "doubler" / "doubler.py").read_text() == ORIGIN_PYTHON
    assert (REPO / "manifests" / "doubler_js" / "doubler_js.js").read_text() == ORIGIN_JAVASCRIPT


def test_limits_are_filled_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(limits=Limits(cpus=0.5, memory_mb=256, timeout_s=7, network=False,
                                      pids=32, output_bytes=4096))
    path = write(tmp_path, BASE + "limits: {timeout_s: 2, network: true}\n")
    settings = settings.replace(limits_max=LimitsMax(network=True))
    assert load_manifest(path, settings).limits == Limits(
        cpus=0.5, memory_mb=256, timeout_s=2, network=True, pids=32, output_bytes=4096)


def test_limits_over_the_settings_maximum(tmp_path: Path) -> None:
    settings = Settings(limits_max=LimitsMax(cpus=2, timeout_s=3))
    path = write(tmp_path, BASE + "limits: {timeout_s: 5, cpus: 2.5, pids: 512}\n")
    assert messages(path, settings) == [
        "limits.timeout_s: 5 is over the maximum 3",
        "limits.cpus: 2.5 is over the maximum 2",
    ]


def test_each_problem_is_reported_once(tmp_path: Path) -> None:
    """`items: 5` failed the metaschema through eight branches: eight identical lines; a
    `network: 1` was also "over the maximum 0" (the grant is no number)."""
    path = write(tmp_path, BASE + "inports: {x: {schema: {items: 5}}}\nlimits: {network: 1}\n")
    assert messages(path) == [
        "inports.x.schema.items: 5 is not of type 'object', 'boolean'",
        "limits.network: 1 is not of type 'boolean'"]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, "id: Actor\nlanguage: python\nscript: missing.py\n"
                           "limits: {timeout: 5, memory_mb: 99999}\nexamples: {}\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, Settings())
    assert [(p.line, p.column, p.path, p.message) for p in caught.value.problems] == [
        (1, 5, "/id", "id: 'Actor' does not match '^[a-z][a-z0-9_-]{0,63}$'"),
        (3, 9, "/script", "script: 'missing.py' does not exist"),
        (4, 10, "/limits/timeout", "limits: unknown key 'timeout' (did you mean 'timeout_s'?)"),
        (4, 33, "/limits/memory_mb", "limits.memory_mb: 99999 is over the maximum 2048"),
        (5, 11, "/examples", "examples: {} is not of type 'array'"),
    ]
    assert str(caught.value).splitlines()[0] == (
        f"{display_path(path)}:1:5: id: 'Actor' does not match '^[a-z][a-z0-9_-]{{0,63}}$'")


def test_a_final_newline_does_not_pass_a_pattern(tmp_path: Path) -> None:
    """The manifest's patterns read as ECMA-262 reads them: Python's `$` alone would also
    match before a final newline, and "actor\\n" would load beside "actor"."""
    path = write(tmp_path, 'id: "actor\\n"\nlanguage: python\nscript: actor.py\n'
                           'entrypoint: "process\\n"\ninports:\n  "input\\n": {schema: true}\n')
    assert messages(path) == [
        "id: 'actor\\n' does not match '^[a-z][a-z0-9_-]{0,63}$'",
        "entrypoint: 'process\\n' does not match '^[A-Za-z_$][A-Za-z0-9_$]*$'",
        "entrypoint: actor.py defines no top-level function 'process\\n'",
        "inports: invalid port name 'input\\n': 'input\\n' does not match "
        "'^[a-zA-Z_][a-zA-Z0-9_]{0,63}$'",
    ]


def test_at_most_256_ports_of_each_kind(tmp_path: Path) -> None:
    many = "".join(f"  p{i}: {{schema: {{type: number}}}}\n" for i in range(257))
    path = write(tmp_path, BASE + "inports:\n" + many + "outports:\n" + many)
    assert messages(path) == ["inports: 257 ports; an actor has at most 256 of each kind",
                              "outports: 257 ports; an actor has at most 256 of each kind"]
    fewer = many.replace("  p256: {schema: {type: number}}\n", "")
    path = write(tmp_path, BASE + "inports:\n" + fewer)
    assert len(load_manifest(path, Settings()).inports) == 256


# --- $ref bundling ---


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_shared_ref_is_bundled_and_validates_alone(in_repo: Path) -> None:
    actor = load_manifest("manifests/order_total/order_total.yaml", Settings())
    schema = json.loads(json.dumps(actor.descriptor()["inports"]["order"]["schema"]))
    # a compound document: the file is an embedded resource, named without a host path
    order = "urn:actor-sandbox:schema:schemas/order.json"
    assert _refs(schema) == [order, f"{order}#/$defs/line"]
    assert schema["$defs"]["order"]["$id"] == order
    assert schema["$defs"]["order"]["title"] == "Order"
    assert "/work" not in json.dumps(schema) and str(in_repo) not in json.dumps(schema)
    good = {"id": "A-1", "lines": [{"sku": "x", "quantity": 2, "unit_price": 1.5}]}
    bad = {"id": "A-1", "lines": [{"sku": "x", "quantity": 0, "unit_price": 1.5}]}
    jsonschema.validate(good, schema)  # plain jsonschema, no registry, no files
    with pytest.raises(jsonschema.ValidationError, match="0 is less than the minimum of 1"):
        jsonschema.validate(bad, schema)
    port = actor.inports["order"]
    assert port.errors(good) == []
    assert port.errors(bad) == [{"path": "/lines/0/quantity",
                                 "message": "0 is less than the minimum of 1"}]


def test_nested_and_recursive_refs_are_bundled(tmp_path: Path) -> None:
    shared = tmp_path / "schemas"
    shared.mkdir()
    (shared / "tree.json").write_text(json.dumps({
        "type": "object", "required": ["name"],
        "properties": {"name": {"$ref": "common/name.json"},
                       "children": {"type": "array", "items": {"$ref": "tree.json"}}}}))
    (shared / "common").mkdir()
    (shared / "common" / "name.json").write_text(json.dumps(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x:name",
         "type": "string", "minLength": 1}))
    path = write(tmp_path / "actors", BASE + "inports:\n  tree:\n"
                 "    schema: {$ref: ../schemas/tree.json}\n")
    schema = load_manifest(path, Settings(schema_roots=(shared,))).inports["tree"].schema
    tree = "urn:actor-sandbox:schema:schemas/tree.json"
    assert sorted(set(_refs(schema))) == [tree, "urn:x:name"]  # a file's own $id is kept
    assert schema["$defs"]["name"] == {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x:name",
        "type": "string", "minLength": 1}
    validator = jsonschema.Draft202012Validator(json.loads(json.dumps(schema)))
    assert validator.is_valid({"name": "a", "children": [{"name": "b", "children": []}]})
    assert not validator.is_valid({"name": "a", "children": [{"name": ""}]})


def test_a_ref_may_not_read_outside_the_folder_and_schema_roots(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text('{"type": "string", "description": "private"}')
    path = write(tmp_path / "actors", BASE + "inports:\n  x:\n"
                 "    schema: {$ref: ../secret.json}\n")
    assert messages(path, Settings(schema_roots=(tmp_path / "schemas",))) == [
        f"inports.x.schema.$ref: $ref '../secret.json' cannot be read: {tmp_path}/secret.json "
        "is outside the manifest's folder and the settings' schema_roots"]
    schema = load_manifest(path, Settings(schema_roots=(tmp_path,))).inports["x"].schema
    assert schema["$defs"]["secret"] == {"$id": "urn:actor-sandbox:schema:secret.json",
                                         "type": "string", "description": "private"}


def test_local_refs_and_defs_keep_working(tmp_path: Path) -> None:
    (tmp_path / "n.json").write_text('{"type": "number"}')
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema:\n"
                 "      $defs: {n: {type: string}}\n"
                 "      properties: {a: {$ref: '#/$defs/n'}, b: {$ref: n.json}}\n")
    schema = load_manifest(path, Settings()).inports["x"].schema
    n_json = "urn:actor-sandbox:schema:n.json"
    assert schema["$defs"] == {"n": {"type": "string"}, "n_2": {"$id": n_json, "type": "number"}}
    assert schema["properties"] == {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": n_json}}


def test_ref_problems(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "bad.json").write_text('{"type": 5}')
    (tmp_path / "old.json").write_text('{"$schema": "http://json-schema.org/draft-07/schema#"}')
    path = write(tmp_path, BASE + "inports:\n"
                 "  a: {schema: {$ref: broken.json}}\n"
                 "  b: {schema: {$ref: 'http://example.com/s.json'}}\n"
                 "  c: {schema: {$ref: bad.json}}\n"
                 "  d: {schema: {$ref: old.json}}\n"
                 "  e: {schema: {$schema: 'http://example.com/my-dialect'}}\n")
    assert messages(path) == [
        "inports.a.schema.$ref: $ref 'broken.json' cannot be read: not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        "inports.b.schema.$ref: $ref 'http://example.com/s.json' names "
        "http://example.com/s.json, which is not in this schema; remote documents are never "
        "fetched: embed it (a subschema with that $id) or save it as a file beside the manifest "
        "or under schema_roots",
        f"inports.c.schema.$ref: {display_path(tmp_path / 'bad.json')}: /type: "
        "5 is not one of ['array', 'boolean', 'integer', 'null', 'number', 'object', 'string']",
        f"inports.d.schema.$ref: {display_path(tmp_path / 'old.json')} uses another $schema "
        "than the schema referring to it",
        "inports.e.schema.$schema: unknown $schema 'http://example.com/my-dialect'",
    ]


def test_older_draft_port_schema(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "inports:\n  x:\n    schema:\n"
                 "      $schema: 'http://json-schema.org/draft-07/schema#'\n"
                 "      type: integer\n")
    port = load_manifest(path, Settings()).inports["x"]
    assert port.validator.dialect is jsonschema.Draft7Validator
    assert port.errors(1) == [] and port.errors("1") != []


# --- config, pool, examples ---


def test_a_bad_default_is_reported_once_not_for_every_example(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "config:\n"
                 "  schema: {type: object, properties: {f: {type: number}, m: {type: string}}}\n"
                 "  defaults: {f: x, m: fast}\n"
                 "examples:\n  - {name: a, payload: {}, outputs: {}}\n"
                 "  - {name: b, payload: {}, outputs: {}, config: {m: 3}}\n")
    assert messages(path) == ["config.defaults.f: 'x' is not of type 'number'",
                              "examples[1].config.m: 3 is not of type 'string'"]


def test_counter_config_state_and_examples(in_repo: Path) -> None:
    actor = load_manifest("manifests/counter/counter.yaml", Settings())
    assert dict(actor.config_defaults) == {"factor": 2}
    assert actor.config_validator is not None
    assert actor.config_validator.is_valid({"factor": 3})
    assert not actor.config_validator.is_valid({"factor": "3"})
    assert actor.examples == (
        Example("first call, default factor", {"value": 5}, {"result": 10, "calls": 1}),
        Example("fifth call, factor from the caller", {"value": 5}, {"result": 15, "calls": 5},
                config={"factor": 3}, state={"count": 4}),
    )


def test_config_schema_problems_and_defaults_left_to_the_caller(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "config:\n  schema: {required: [factor]}\n")
    assert load_manifest(path, Settings()).config_defaults == {}
    path = write(tmp_path, BASE + "config:\n  schema: {type: nope}\n  defaults: {}\n")
    assert messages(path) == [
        "config.schema.type: 'nope' is not one of "
        "['array', 'boolean', 'integer', 'null', 'number', 'object', 'string']"]


def test_pool_and_optional_inport(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "pool: {min_warm: 1, max_workers: 2, reuse: false}\n"
                 "inports:\n  opt: {required: false, schema: true}\n"
                 "examples:\n  - {name: empty, payload: {}, outputs: {}}\n")
    actor = load_manifest(path, Settings())
    assert actor.pool == PoolSpec(min_warm=1, max_workers=2, max_queue=64, reuse=False)
    assert actor.inports["opt"].required is False


def test_pool_min_warm_over_max_workers(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "pool: {min_warm: 5}\n")
    assert messages(path) == ["pool.min_warm: 5 is over pool.max_workers 4"]


def test_example_problems(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "inports:\n  a: {schema: {type: integer}}\n"
                 "outports:\n  b: {schema: {type: object, required: [k]}}\n"
                 "examples:\n"
                 "  - {name: one, payload: {a: 1, z: 2}, outputs: {b: {}}}\n"
                 "  - {name: one, payload: {a: 1}, outputs: {b: {k: 1}}}\n")
    assert messages(path) == [
        "examples[0].payload: unknown inport 'z'",
        "examples[0].outputs.b: 'k' is a required property",
        "examples[1].name: another example is already named 'one'",
    ]


# --- scripts ---


@pytest.mark.parametrize("name, source", [
    ("a.js", "module.exports = { process };\nfunction process(c) { return 1; }\n"),
    ("b.js", "module.exports = {\n  other: 1,\n  async process(context) { return 1; },\n};\n"),
    ("c.js", "exports.process = async (context) => ({});\n"),
    ("d.js", "const process = async (context) => ({});\n"),
    ("e.mjs", "export async function process(context) {\n  return {};\n}\n"),
    ("f.cjs", "async function process(context) { return {}; }\nmodule.exports = { process };\n"),
    ("g.js", "export { run as process };\nasync function run(context) { return {}; }\n"),
])
def test_javascript_entrypoint_forms(tmp_path: Path, name: str, source: str) -> None:
    path = write(tmp_path, f"id: js\nlanguage: javascript\nscript: {name}\n", {name: source})
    assert load_manifest(path, Settings()).script == (tmp_path / name).resolve()


def test_python_entrypoint_with_the_origin_decorator(tmp_path: Path) -> None:
    source = "@actor({'inports': ['x']})\nasync def handle(context):\n    return None\n"
    path = write(tmp_path, BASE + "entrypoint: handle\n", {"actor.py": source})
    assert load_manifest(path, Settings()).entrypoint == "handle"


def test_node_missing_is_a_problem(tmp_path: Path) -> None:
    settings = Settings(sandbox=SandboxSettings(node="/nonexistent/node"))
    path = write(tmp_path, "id: js\nlanguage: javascript\nscript: a.js\n",
                 {"a.js": "async function process(c) {}\n"})
    assert messages(path, settings) == [
        "script: cannot check JavaScript: /nonexistent/node not found (settings sandbox.node)"]


def test_script_in_a_subfolder_and_symlink_inside(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "real.py").write_text(PROCESS_PY)
    (tmp_path / "link.py").symlink_to(tmp_path / "src" / "real.py")
    path = write(tmp_path, "id: a\nlanguage: python\nscript: link.py\n", {})
    assert load_manifest(path, Settings()).script == (tmp_path / "src" / "real.py").resolve()
    path = write(tmp_path, "id: a\nlanguage: python\nscript: src/real.py\n", {})
    assert load_manifest(path, Settings()).script == (tmp_path / "src" / "real.py").resolve()


def test_script_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.py").mkdir()
    path = write(tmp_path, "id: a\nlanguage: python\nscript: dir.py\n", {})
    assert messages(path) == ["script: 'dir.py' is not a file"]


# --- files and paths ---


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert messages(tmp_path / "empty.yaml") == ["the file is empty; expected a mapping"]
    check = check_manifest(tmp_path / "nope.yaml", Settings())
    assert check.actor is None and check.problems[0].message.startswith("cannot read: ")


def test_find_manifests(tmp_path: Path) -> None:
    for rel in ("b.yaml", "a/c.yml", "a/d.py", "a/deep/e.yaml", ".git/f.yaml", "a/.hidden.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = find_manifests([tmp_path, tmp_path / "b.yaml", tmp_path / "a" / "d.py"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/c.yml", "a/d.py", "a/deep/e.yaml", "b.yaml"]
    with pytest.raises(FileNotFoundError):
        find_manifests([tmp_path / "missing"])


def test_display_path(in_repo: Path, tmp_path: Path) -> None:
    assert display_path("./manifests/doubler/doubler.yaml") == "manifests/doubler/doubler.yaml"
    shown = display_path(REPO / "manifests" / "doubler" / "doubler.yaml")
    assert shown == "manifests/doubler/doubler.yaml"
    assert display_path(tmp_path / "x.yaml") == str(tmp_path / "x.yaml")
    actor = load_manifest(REPO / "manifests" / "ticker" / "ticker.yaml", Settings())
    assert actor.manifest_display == "manifests/ticker/ticker.yaml"
