"""Manifests, schema files and scripts built to crash or hang the loader: each gives clear
problems (``FILE:LINE:COL: message``) and never a traceback, and what lint calls clean
is what the sandbox can run (ints where the model says int)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ManifestError
from service.manifest.files import FileRefused, FileTooBig, read_bytes
from service.manifest.lint import lint_main, lint_paths
from service.manifest.loader import (
    MAX_MANIFEST_BYTES,
    check_document,
    load_manifest,
    manifest_schema,
)
from service.manifest.metadata import MetadataError, read_metadata
from service.manifest.model import PoolSpec
from service.manifest.numbers import MAX_MAGNITUDE
from service.manifest.script_only import check_script_only
from service.manifest.yamlnodes import parse_manifest_yaml
from service.settings import Settings

PROCESS_PY = "async def process(context):\n    return None\n"
BASE = "id: actor\nlanguage: python\nscript: actor.py\n"
TOO_LARGE = "is too large: a number must fit in a double (at most about 1.8e308)"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "actor.py").write_text(PROCESS_PY)
    return tmp_path


def lint(*paths: str) -> list[str]:
    """What `service lint PATHS` prints, one line per problem (no traceback may escape)."""
    out = io.StringIO()
    lint_main(list(paths), Settings(), "text", out)
    return out.getvalue().splitlines()


# --- (1) integral floats in integer fields ---


def _integer_fields(schema: Any, root: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every property of the manifest format typed "integer" (refs followed)."""
    if isinstance(schema, dict) and "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if not isinstance(schema, dict):
        return []
    if schema.get("type") == "integer":
        return [path]
    return [found for name, sub in schema.get("properties", {}).items()
            for found in _integer_fields(sub, root, (*path, name))]


def test_every_integer_field_given_as_an_integral_float_reaches_the_model_as_an_int(
        here: Path) -> None:
    schema = manifest_schema()
    fields = _integer_fields(schema, schema)
    assert sorted(fields) == [("limits", "memory_mb"), ("limits", "output_bytes"),
                              ("limits", "pids"), ("pool", "max_queue"),
                              ("pool", "max_workers"), ("pool", "min_warm")]  # new ones: add
    sections: dict[str, dict[str, float]] = {}
    for section, key in fields:
        sections.setdefault(section, {})[key] = 2.0
    (here / "actor.yaml").write_text(BASE + "".join(
        f"{section}: {{{', '.join(f'{k}: {v!r}' for k, v in values.items())}}}\n"
        for section, values in sections.items()))
    assert lint("actor.yaml") == []
    actor = load_manifest("actor.yaml", Settings())
    for section, key in fields:
        value = getattr(getattr(actor, section), key)
        assert type(value) is int and value == 2, (section, key, value)
    assert actor.pool == PoolSpec(min_warm=2, max_workers=2, max_queue=2)
    assert actor.descriptor()["limits"]["memory_mb"] == 2
    assert "2.0" not in str(actor.descriptor())


def test_integral_floats_over_a_maximum_are_reported_as_ints(here: Path) -> None:
    (here / "actor.yaml").write_text(BASE + "limits: {memory_mb: 4096.0, pids: 1.5}\n")
    assert lint("actor.yaml") == [
        "actor.yaml:4:21: limits.memory_mb: 4096 is over the maximum 2048",
        "actor.yaml:4:35: limits.pids: 1.5 is not of type 'integer'"]


def test_script_only_memory_given_as_an_integral_float(here: Path) -> None:
    script = here / "warm.py"
    script.write_text('@actor({"component": "warm", "memory": 128.0})\n' + PROCESS_PY)
    actor = check_script_only(script, Settings()).actor
    assert actor is not None
    assert type(actor.limits.memory_mb) is int and actor.limits.memory_mb == 128


# --- (4) numbers too large for a double, anywhere ---


@pytest.mark.parametrize("value, shown", [
    ("9" * 5000, "9999999999…999999 (5000 characters)"),
    ("0x" + "f" * 5000, "0xffffffff…ffffff (5002 characters)"),
    ("-" + "1" * 400, "-111111111…111111 (401 characters)"),
    ("2e308", "2e308"),
])
def test_a_number_too_large_in_limits_is_one_problem_at_its_node(
        here: Path, value: str, shown: str) -> None:
    (here / "actor.yaml").write_text(BASE + f"limits:\n  memory_mb: {value}\n")
    assert lint("actor.yaml") == [f"actor.yaml:5:14: {shown} {TOO_LARGE}"]


def test_the_largest_double_is_still_a_number(here: Path) -> None:
    (here / "actor.yaml").write_text(BASE + f"limits: {{memory_mb: {MAX_MAGNITUDE}}}\n")
    assert lint("actor.yaml") == [
        "actor.yaml:4:21: limits.memory_mb: 1.79769e+308 is over the maximum 2048"]


def test_a_number_too_large_in_a_port_schema_or_an_example(here: Path) -> None:
    big = "0x" + "f" * 4000
    (here / "actor.yaml").write_text(
        BASE + f"inports:\n  n:\n    schema: {{type: integer, maximum: {big}}}\n"
        f"examples:\n  - {{name: e, payload: {{n: {big}}}, outputs: {{}}}}\n")
    assert lint("actor.yaml") == [
        f"actor.yaml:6:38: 0xffffffff…ffffff (4002 characters) {TOO_LARGE}",
        f"actor.yaml:8:28: 0xffffffff…ffffff (4002 characters) {TOO_LARGE}"]


@pytest.mark.parametrize("contents, why", [
    ('{"maximum": ' + "9" * 5000 + "}", f"9999999999…999999 (5000 characters) {TOO_LARGE}"),
    ('{"maximum": 1e400}', f"1e400 {TOO_LARGE}"),
    ('{"maximum": NaN}', "NaN is not a JSON number"),
    ('{"const": -Infinity}', "-Infinity is not a JSON number"),
])
def test_a_schema_file_with_a_number_json_does_not_have(
        here: Path, contents: str, why: str) -> None:
    (here / "s.json").write_text(contents)
    (here / "actor.yaml").write_text(BASE + "inports:\n  n: {schema: {$ref: s.json}}\n")
    assert lint("actor.yaml") == [
        f"actor.yaml:5:22: inports.n.schema.$ref: $ref 's.json' cannot be read: {why}"]


@pytest.mark.parametrize("name, source, expected", [
    ("mem_inf.py", '@actor(name="m", memory="' + "9" * 400 + 'MB")\n' + PROCESS_PY,
     f"mem_inf.py:1:1: memory: 9999999999…999999 (400 characters) {TOO_LARGE}"),
    ("mem_big.py", '\n@actor(name="m", memory=0x' + "f" * 4000 + ")\n" + PROCESS_PY,
     f"mem_big.py:2:2: @actor metadata.memory: an integer of about 4817 digits {TOO_LARGE}"),
    ("timeout_inf.py", '@actor({"component": "m", "timeout": 1e999})\n' + PROCESS_PY,
     "timeout_inf.py:1:2: @actor metadata.timeout: inf is not a JSON number (it has no "
     "infinity or NaN)"),
    ("other.py", '@actor({"component": "m", "tags": {1, 2}})\n' + PROCESS_PY,
     "other.py:1:2: @actor metadata.tags: a set is not a JSON value"),
    ("js_big.js", "const metadata = {component: 'j',\n  timeout: 0x" + "f" * 400 + "};\n",
     f"js_big.js:2:12: 0xffffffff…ffffff (402 characters) {TOO_LARGE}"),
    ("js_inf.js", "const metadata = {component: 'j', timeout: 1e999};\n",
     f"js_inf.js:1:44: 1e999 {TOO_LARGE}"),
    ("js_long.js", "const metadata = {component: 'j', timeout: " + "9" * 5000 + "};\n",
     f"js_long.js:1:44: 9999999999…999999 (5000 characters) {TOO_LARGE}"),
])
def test_a_number_too_large_in_script_metadata(
        here: Path, name: str, source: str, expected: str) -> None:
    (here / name).write_text(source)
    assert lint(name) == [expected]


# --- (5) characters YAML does not allow ---


@pytest.mark.parametrize("text, where, code", [
    ("id: t10\x00\n", "1:8", "0000"),
    ("id: a\ndescription: \"esc \x1b[31m red\"\n", "2:19", "001B"),
    ("id: a\ndescription: bell \x07\n", "2:19", "0007"),
    ("id: a\nlimits:\n  x: \ufffe\n", "3:6", "FFFE"),
    ("\ufeffid: a\r\ndescription: x\x0c\n", "2:15", "000C"),
])
def test_an_unprintable_character_is_a_problem_at_its_place(
        here: Path, text: str, where: str, code: str) -> None:
    (here / "actor.yaml").write_text(text, newline="")
    assert lint("actor.yaml") == [
        f"actor.yaml:{where}: invalid YAML: the character U+{code} is not allowed (YAML takes "
        f"printable characters only; a double-quoted string may hold it escaped: "
        f"\"\\u{code}\")"]


# --- (6) files that are not regular files ---


@pytest.mark.timeout(20)
def test_a_ref_to_a_named_pipe_is_refused_at_once(here: Path) -> None:
    os.mkfifo(here / "pipe.json")
    (here / "actor.yaml").write_text(BASE + "inports:\n  n: {schema: {$ref: pipe.json}}\n")
    assert lint("actor.yaml") == [
        "actor.yaml:5:22: inports.n.schema.$ref: $ref 'pipe.json' cannot be read: "
        "not a regular file (a named pipe)"]


@pytest.mark.timeout(20)
def test_a_named_pipe_among_the_manifests_is_refused_at_once(here: Path) -> None:
    os.mkfifo(here / "pipe.yaml")
    assert lint(".") == ["pipe.yaml:0:0: cannot read: not a regular file (a named pipe)"]
    assert lint("pipe.yaml") == lint(".")


@pytest.mark.timeout(20)
def test_read_bytes_opens_only_regular_files_of_bounded_size(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    for path, kind in ((tmp_path / "pipe", "a named pipe"), (tmp_path, "a folder"),
                       (Path("/dev/zero"), "a character device")):
        with pytest.raises(FileRefused, match=rf"^not a regular file \({kind}\)$"):
            read_bytes(path, 10)
    (tmp_path / "f").write_bytes(b"x" * 11)
    with pytest.raises(FileTooBig, match=r"^over the size limit \(10 bytes\)$"):
        read_bytes(tmp_path / "f", 10)
    assert read_bytes(tmp_path / "f", 11) == b"x" * 11
    with pytest.raises(FileNotFoundError):
        read_bytes(tmp_path / "missing", 10)


def test_a_manifest_over_the_byte_limit_is_not_read(here: Path) -> None:
    (here / "actor.yaml").write_bytes(b"#" * (MAX_MANIFEST_BYTES + 1))
    assert lint("actor.yaml") == [
        f"actor.yaml:0:0: the file is too big: over {MAX_MANIFEST_BYTES} bytes, at most "
        "1048576 characters"]


# --- (10) the entrypoint inside module-level blocks; positions; one problem per node ---


@pytest.mark.parametrize("source", [
    "if True:\n    async def process(context):\n        return None\n",
    "try:\n    import json\nexcept ImportError:\n    pass\nelse:\n"
    "    def process(context):\n        return None\n",
    "try:\n    def process(context):\n        return None\nfinally:\n    pass\n",
    "import contextlib\nwith contextlib.suppress(Exception):\n"
    "    def process(context):\n        return None\n",
    "import sys\nif sys.version_info < (3,):\n    pass\nelse:\n"
    "    def process(context):\n        return None\n",
])
def test_an_entrypoint_in_a_module_level_block_is_found(here: Path, source: str) -> None:
    (here / "actor.py").write_text(source)
    (here / "actor.yaml").write_text(BASE)
    assert lint("actor.yaml") == []


@pytest.mark.parametrize("source", [
    "def outer():\n    def process(context):\n        return None\n",
    "class Actor:\n    def process(self, context):\n        return None\n",
])
def test_an_entrypoint_inside_a_function_or_class_is_not(here: Path, source: str) -> None:
    (here / "actor.py").write_text(source)
    (here / "actor.yaml").write_text(BASE)
    assert lint("actor.yaml") == [
        "actor.yaml:3:9: script: actor.py defines no top-level function 'process'"]


def test_actor_metadata_in_a_module_level_block_is_found(here: Path) -> None:
    (here / "m.py").write_text('try:\n    @actor({"component": "m"})\n'
                               "    async def run(context):\n        return None\n"
                               "except NameError:\n    pass\n")
    actor = check_script_only(here / "m.py", Settings()).actor
    assert actor is not None and (actor.id, actor.entrypoint) == ("m", "run")


def test_a_value_the_parser_refuses_is_one_problem(here: Path) -> None:
    (here / "actor.yaml").write_text(BASE + "description: !!binary aGVsbG8=\n"
                                     "limits: {pids: !!int 0b11}\n")
    assert lint("actor.yaml") == [
        "actor.yaml:4:14: 'aGVsbG8=' is not a JSON value",
        "actor.yaml:5:16: unsupported YAML value: '0b11' is not an integer (decimal, 0o octal "
        "or 0x hex digits)"]


def test_problems_in_a_file_have_a_line_and_a_column(here: Path) -> None:
    (here / "utf8.yaml").write_bytes(b"id: a\nlanguage: python\ndescription: caf\xc3\xa9 \xff\n")
    (here / "big.yaml").write_text("id: a\n" + "#" * 1_048_576 + "\n")
    (here / "deep.yaml").write_text("id: a\ndescription: " + "[" * 5000 + "\n")
    (here / "none.py").write_text("X = 1\n")
    (here / "warn.py").write_text('\n@actor({"component": "w"})\n' + PROCESS_PY)
    found = sorted(lint("utf8.yaml", "big.yaml", "deep.yaml", "none.py", "warn.py"))
    # how deep Python lets the parser go depends on the stack already in use
    assert re.fullmatch(r"deep\.yaml:2:\d+: the YAML is nested too deeply", found.pop(1))
    assert found == [
        "big.yaml:2:1048571: the file is too big: 1048583 characters, at most 1048576",
        "none.py:1:1: no manifest (none.yaml or none.yml) beside the script and no actor "
        "metadata in it (an @actor({...}) decorator)",
        "utf8.yaml:3:19: the file is not UTF-8: byte 0xff (invalid start byte)",
        "warn.py:2:1: warning: script-only actor: its ports have no schemas (any JSON passes); "
        "a manifest warn.yaml beside the script declares them",
    ]


# --- (10) numbers as JSON (and YAML 1.2) read them ---


@pytest.mark.parametrize("text, value", [
    ("1e300", 1e300), ("-1.5E-3", -1.5e-3), (".5", 0.5), ("1.", 1.0), ("017", 17),
    ("0o17", 15), ("0x1F", 31), ("+3", 3), ("-0", 0),
    ("1:30", "1:30"), ("0b11", "0b11"), ("1_000", "1_000"), ("0x1_F", "0x1_F"),
    ("1e", "1e"), ("'12'", "12"),
])
def test_numbers_are_read_as_json_and_yaml_1_2_read_them(text: str, value: object) -> None:
    doc = parse_manifest_yaml(f"n: {text}\n", "f.yaml")
    assert doc.problems == () and doc.value["n"] == value
    assert type(doc.value["n"]) is type(value)


@pytest.mark.parametrize("text, value", [
    ("true", True), ("False", False), ("TRUE", True), ("yes", "yes"), ("No", "No"),
    ("on", "on"), ("OFF", "OFF"), ("y", "y"), ("~", None), ("null", None),
])
def test_booleans_are_read_as_yaml_1_2_reads_them(text: str, value: object) -> None:
    """yes/no/on/off are YAML 1.1's booleans, strings in 1.2 (and to the language server)."""
    doc = parse_manifest_yaml(f"b: {text}\n", "f.yaml")
    assert doc.problems == () and doc.value["b"] == value
    assert type(doc.value["b"]) is type(value)


def test_a_timeout_of_1e300_is_a_number(here: Path) -> None:
    (here / "actor.yaml").write_text(BASE + "limits: {timeout_s: 1e300, cpus: 1:30}\n")
    assert lint("actor.yaml") == [
        "actor.yaml:4:21: limits.timeout_s: 1e+300 is over the maximum 300",
        "actor.yaml:4:34: limits.cpus: '1:30' is not of type 'number'"]


def test_lint_paths_survives_every_file_above_at_once(here: Path) -> None:
    """One run over a folder of them all: every problem listed, none a crash."""
    (here / "a.yaml").write_text("id: a\x00\n")
    (here / "b.yaml").write_text(BASE.replace("actor\n", "b\n", 1) + "limits: {pids: 1e999}\n")
    os.mkfifo(here / "c.yaml")
    (here / "d.js").write_text("const metadata = {component: 'd', timeout: 1e999};\n")
    assert [p.file for p in lint_paths(["."], Settings())] == ["a.yaml", "b.yaml", "c.yaml",
                                                               "d.js"]


# --- anything else built from the same pieces ---

YAML_PIECES = st.sampled_from([
    "limits:", "pool:", "inports:", "examples:", "config:", " {", "}", "[", "]", ", ", ": ",
    "\n  ", "\n", "memory_mb", "min_warm", "pids", "cpus", "schema", "x", "maximum", "$ref",
    "type", "integer", "1.0", "1e300", "1e999", "0x" + "f" * 300, "9" * 400, "-1", ".5",
    "!!binary aGk=", "!!int 3", "!!float x", "&a", "*a", "<<: *a", "1:30", "null", "'s'",
    "\x00", "\x1b", "\ufffe"])
JS_PIECES = st.sampled_from([*"{}[],:'\"`/*\n -.eE0123456789xXa$", "true", "null", "0x",
                             "1e999", "9" * 400, "//", "/*", "*/", "${"])
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@HYPOTHESIS
@given(st.lists(YAML_PIECES, max_size=30).map("".join))
def test_no_manifest_text_makes_the_checks_raise(text: str) -> None:
    try:
        doc = parse_manifest_yaml(BASE + text, "f.yaml")
    except ManifestError:
        return
    check_document(doc, "f.yaml", Path("/nonexistent/f.yaml"), Settings())


@HYPOTHESIS
@given(text=st.lists(JS_PIECES, max_size=40).map("".join))
def test_no_javascript_metadata_makes_the_reader_raise(tmp_path: Path, text: str) -> None:
    (tmp_path / "m.js").write_text("const metadata = " + text)
    with contextlib.suppress(MetadataError):
        read_metadata(tmp_path / "m.js", "javascript")
