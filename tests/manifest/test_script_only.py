"""Script-only actors: metadata read statically from the script (shared/spec/state.md §1)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from service.manifest.lint import check_paths, lint_main
from service.manifest.metadata import MetadataError, memory_mb, read_metadata
from service.manifest.script_only import check_script_only
from service.settings import Settings

SETTINGS = Settings()


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_python_dict_form(tmp_path: Path) -> None:
    script = _write(tmp_path, "mult.py", '''
@actor({"component": "mult", "description": "x2", "inports": ["input"],
        "outports": ["output"], "memory": "256MB", "timeout": 30,
        "config_schema": {"type": "object", "properties": {"k": {"type": "integer"}}}})
async def process(context):
    return None
''')
    check = check_script_only(script, SETTINGS)
    assert check.problems == []
    actor = check.actor
    assert actor is not None
    assert (actor.id, actor.language, actor.description) == ("mult", "python", "x2")
    assert actor.script == script.resolve() and actor.root == tmp_path.resolve()
    assert actor.inports["input"].schema == {} and not actor.inports["input"].required
    assert actor.outports["output"].schema == {}
    assert (actor.limits.memory_mb, actor.limits.timeout_s) == (256, 30)
    assert actor.limits.cpus == SETTINGS.limits.cpus  # everything else: the defaults
    assert actor.config_schema["properties"]["k"] == {"type": "integer"}
    assert actor.descriptor()["manifest"].endswith("mult.py")


def test_python_keyword_form_names_the_entrypoint(tmp_path: Path) -> None:
    script = _write(tmp_path, "kw.py", '''
import something_only_the_sandbox_has

@actor(name="kw", inports=["a", "b"], outports=["o"], description="d", memory="1GiB",
       timeout=5, await_all_inports=True, version="1.0.0", tags=["t"], category="c",
       state_backend="redis")
def run(context):
    return 1
''')
    actor = check_script_only(script, SETTINGS).actor
    assert actor is not None
    assert actor.entrypoint == "run" and actor.limits.memory_mb == 1024
    assert all(port.required for port in actor.inports.values())  # await_all_inports


@pytest.mark.parametrize("declaration", ["const", "let", "var"])
def test_javascript_metadata_literal(tmp_path: Path, declaration: str) -> None:
    script = _write(tmp_path, "js.js", f'''// a comment
{declaration} metadata = {{
  component: 'js_actor', /* inline */ "description": `multi word`,
  inports: ["in",], outports: ['out'], timeout: 2.5, memory: "64MB",
  tags: [1, -2.5, .5, 0x10, 1e3, null, true, false, {{nested: "ok"}}],
}};
async function process(context) {{ return null; }}
''')
    check = check_script_only(script, SETTINGS)
    assert check.problems == []
    assert check.actor is not None
    assert (check.actor.id, check.actor.description) == ("js_actor", "multi word")
    assert (check.actor.limits.timeout_s, check.actor.limits.memory_mb) == (2.5, 64)
    meta = read_metadata(script, "javascript")
    assert meta is not None
    assert meta.values["tags"] == [1, -2.5, 0.5, 16, 1000.0, None, True, False, {"nested": "ok"}]


def test_javascript_jsdoc_component(tmp_path: Path) -> None:
    script = _write(tmp_path, "doc.js", '''/**
 * @component doc_actor
 * @description Reads the docs
 * @inport a
 * @outports x, y
 */
module.exports = { process: async (context) => null };
''')
    actor = check_script_only(script, SETTINGS).actor
    assert actor is not None
    assert (actor.id, actor.description) == ("doc_actor", "Reads the docs")
    assert list(actor.inports) == ["a"] and list(actor.outports) == ["x", "y"]


@pytest.mark.parametrize(("name", "text", "line", "message"), [
    ("v.py", "x = {}\n@actor(x)\ndef process(c): pass\n", 2, "literal"),
    ("s.py", "@actor(**{'name': 'a'})\ndef process(c): pass\n", 1, "without running"),
    ("b.py", "@actor\ndef process(c): pass\n", 1, "needs its metadata"),
    ("x.py", "@actor({'component': 'a'})\ndef process(c):\n  pass pass\n", 3, "invalid Python"),
    ("v.js", "const metadata = {component: name};\n", 1, "literal"),
    ("c.js", "\nconst metadata = {component: make('a')};\n", 2, "literal"),
    ("t.js", "const metadata = {component: `a${b}`};\n", 1, "template"),
    ("p.js", "const metadata = {...base};\n", 1, "property name"),
    ("h.js", "const metadata = {component};\n", 1, "shorthand"),
])
def test_metadata_that_is_not_a_literal_is_refused_with_its_line(
        tmp_path: Path, name: str, text: str, line: int, message: str) -> None:
    script = _write(tmp_path, name, text)
    check = check_script_only(script, SETTINGS)
    assert check.actor is None
    assert len(check.problems) == 1
    assert check.problems[0].line == line and message in check.problems[0].message


def test_metadata_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = _write(tmp_path, "evil.py", f'''
open({str(marker)!r}, "w").write("ran")
@actor({{"component": "evil"}})
async def process(context): pass
''')
    assert check_script_only(script, SETTINGS).actor is not None
    assert not marker.exists()


def test_limits_over_the_maximum_are_refused(tmp_path: Path) -> None:
    script = _write(tmp_path, "big.py",
                    '\n\n@actor({"component": "big", "memory": "4GB", "timeout": 9999})\n'
                    "def process(c): pass\n")
    check = check_script_only(script, SETTINGS)
    assert check.actor is None
    messages = sorted(p.message for p in check.problems)
    assert messages == ["limits.memory_mb: 4096 is over the maximum 2048",
                        "limits.timeout_s: 9999 is over the maximum 300"]
    assert {p.line for p in check.problems} == {3}  # the decorator's line
    assert {p.file for p in check.problems} == {check.file}


def test_a_bad_component_name_is_reported(tmp_path: Path) -> None:
    script = _write(tmp_path, "bad.py", '@actor({"component": "Bad Name"})\ndef process(c): pass\n')
    problems = check_script_only(script, SETTINGS).problems
    assert [p.path for p in problems] == ["/id"]
    nameless = _write(tmp_path, "none.py", '@actor({"inports": []})\ndef process(c): pass\n')
    assert "names no component" in check_script_only(nameless, SETTINGS).problems[0].message


@pytest.mark.parametrize("decorator", ["@ actor", "@rt.actor", "@rt . actor"])
def test_every_decorator_form_is_found(tmp_path: Path, decorator: str) -> None:
    """Not only the text "@actor": the decorator may be spaced, or a module's."""
    script = _write(tmp_path, "spaced.py", "import types\n"
                    "rt = types.SimpleNamespace(actor=lambda meta: lambda f: f)\n"
                    f'{decorator}({{"component": "spaced"}})\ndef process(c): pass\n')
    check = check_script_only(script, SETTINGS)
    assert check.problems == [] and check.actor is not None and check.actor.id == "spaced"


@pytest.mark.parametrize(("given", "expected"), [
    ("256MB", 256), ("256MiB", 256), ("256M", 256), ("1GB", 1024), ("1GiB", 1024),
    ("1.5G", 1536), ("512KB", 1), ("2048kb", 2), (300, 300), ("lots", "lots"), ("0MB", 0)])
def test_memory_sizes(given: object, expected: object) -> None:
    assert memory_mb(given) == expected


def test_a_manifest_beside_the_script_wins(tmp_path: Path) -> None:
    _write(tmp_path, "both.py", '@actor({"component": "from_script"})\n'
                                "def process(c): pass\n")
    _write(tmp_path, "both.yaml", "id: from_manifest\nlanguage: python\nscript: both.py\n")
    actors, problems = check_paths([tmp_path], SETTINGS)
    assert [a.id for a in actors] == ["from_manifest"] and problems == []
    actors, problems = check_paths([tmp_path / "both.py"], SETTINGS)
    assert [a.id for a in actors] == ["from_manifest"] and problems == []


def test_folder_walks_skip_scripts_without_metadata(tmp_path: Path) -> None:
    _write(tmp_path, "helper.py", "X = 1\n")
    _write(tmp_path, "actor_a.py", '@actor({"component": "a"})\ndef process(c): pass\n')
    (tmp_path / "node_modules").mkdir()
    _write(tmp_path / "node_modules", "dep.js", "const metadata = {component: 'dep'};\n")
    actors, problems = check_paths([tmp_path], SETTINGS)
    assert [a.id for a in actors] == ["a"]
    assert [p.severity for p in problems] == ["warning"]
    _, problems = check_paths([tmp_path / "helper.py"], SETTINGS)  # named: it must be an actor
    assert [p.severity for p in problems] == ["error"]
    assert "helper.yaml" in problems[0].message and "@actor" in problems[0].message


def test_lint_warns_about_schema_less_ports_and_strict_fails(tmp_path: Path) -> None:
    _write(tmp_path, "w.py", '@actor({"component": "w", "inports": ["i"]})\n'
                             "def process(c): pass\n")
    out = io.StringIO()
    assert lint_main([tmp_path], SETTINGS, "text", out) == 0
    assert "warning: script-only actor: its ports have no schemas" in out.getvalue()
    assert lint_main([tmp_path], SETTINGS, "text", io.StringIO(), strict=True) == 1
    github = io.StringIO()
    lint_main([tmp_path], SETTINGS, "github", github)
    assert github.getvalue().startswith("::warning file=")


def test_duplicate_ids_across_manifests_and_scripts(tmp_path: Path) -> None:
    _write(tmp_path, "one.py", '@actor({"component": "same"})\ndef process(c): pass\n')
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "two.js", "const metadata = {component: 'same'};\n"
                                       "async function process(c) {}\n")
    _, problems = check_paths([tmp_path], SETTINGS)
    errors = [p for p in problems if p.is_error]
    assert len(errors) == 1 and "already used" in errors[0].message


def test_unreadable_metadata_raises(tmp_path: Path) -> None:
    script = _write(tmp_path, "u.js", "const metadata = 5;\n")
    with pytest.raises(MetadataError):
        read_metadata(script, "javascript")
