"""Lint output formats, exit codes, and the position-keeping YAML parser."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from service.errors import ManifestError, Problem
from service.manifest.lint import format_problems, lint_main, lint_paths
from service.manifest.yamlnodes import parse_manifest_yaml
from service.settings import Settings

PROBLEMS = [
    Problem("manifests/a.yaml", 3, 5, "limits: unknown key 'timeout'", "/limits/timeout"),
    Problem("manifests/b,c.yaml", None, None, "100% wrong:\nsecond line", ""),
]


def test_text_format() -> None:
    assert format_problems(PROBLEMS, "text") == (
        "manifests/a.yaml:3:5: limits: unknown key 'timeout'\n"
        "manifests/b,c.yaml:0:0: 100% wrong:\nsecond line")


def test_json_format() -> None:
    warning = Problem("s.py", 1, 1, "script-only actor", "", severity="warning")
    assert json.loads(format_problems([*PROBLEMS, warning], "json")) == [
        {"file": "manifests/a.yaml", "line": 3, "column": 5, "path": "/limits/timeout",
         "message": "limits: unknown key 'timeout'", "severity": "error"},
        {"file": "manifests/b,c.yaml", "line": None, "column": None, "path": "",
         "message": "100% wrong:\nsecond line", "severity": "error"},
        {"file": "s.py", "line": 1, "column": 1, "path": "", "message": "script-only actor",
         "severity": "warning"},
    ]
    assert format_problems([], "json") == "[]"


def test_github_format() -> None:
    assert format_problems(PROBLEMS, "github") == (
        "::error file=manifests/a.yaml,line=3,col=5::limits: unknown key 'timeout'\n"
        "::error file=manifests/b%2Cc.yaml::100%25 wrong:%0Asecond line")


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_problems(PROBLEMS, "xml")


def test_lint_main_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text("def process(context):\n    return None\n")
    (tmp_path / "a.yaml").write_text("id: a\nlanguage: python\nscript: a.py\n")
    out = io.StringIO()
    assert lint_main(["a.yaml"], Settings(), "text", out) == 0
    assert out.getvalue() == ""
    (tmp_path / "b.yaml").write_text("id: a\nlanguage: python\nscript: a.py\ninport: {}\n")
    out = io.StringIO()
    assert lint_main(["."], Settings(), "github", out) == 1
    assert out.getvalue() == (
        "::error file=b.yaml,line=1,col=5::id 'a' is already used by a.yaml\n"
        "::error file=b.yaml,line=4,col=1::unknown key 'inport' (did you mean 'inports'?)\n")


def test_missing_path_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    assert lint_main(["nowhere"], Settings(), "json", out) == 1
    assert json.loads(out.getvalue()) == [{"file": "nowhere", "line": None, "column": None,
                                          "path": "", "message": "no such file or folder",
                                          "severity": "error"}]


def test_invalid_id_is_not_compared_across_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text("id: Bad\nlanguage: python\nscript: x.py\n")
    (tmp_path / "x.py").write_text("def process(context):\n    return None\n")
    messages = [p.message for p in lint_paths([tmp_path], Settings())]
    assert messages == ["id: 'Bad' does not match '^[a-z][a-z0-9_-]{0,63}$'"] * 2


# --- yamlnodes ---


def test_positions_of_values_and_keys() -> None:
    doc = parse_manifest_yaml("a:\n  b: [1, {c: x}]\n'd/e': 2\n", "f.yaml")
    assert doc.value == {"a": {"b": [1, {"c": "x"}]}, "d/e": 2}
    assert doc.position("/a/b/1/c") == (2, 14)
    assert doc.position("/a/b/1/c", key=True) == (2, 11)
    assert doc.position("/a/b/0") == (2, 7)
    assert doc.position("/d~1e") == (3, 8)
    assert doc.position("/a/b/1/missing/deeper") == (2, 10)  # the nearest parent
    assert doc.position("") == (1, 1)


def test_json_values_only() -> None:
    doc = parse_manifest_yaml("on: 2024-01-02\n1: yes\nx: .inf\n", "f.yaml")
    assert doc.value == {"on": "2024-01-02", "1": "yes", "x": None}
    assert [str(p) for p in doc.problems] == ["f.yaml:3:4: '.inf' is not a JSON value"]


def test_duplicate_keys_and_merge_keys() -> None:
    text = "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\nm2: 1\nm2: 2\n"
    doc = parse_manifest_yaml(text, "f.yaml")
    assert doc.value["m"] == {"x": 3, "y": 2}  # overriding a merged key is no duplicate
    assert doc.value["m2"] == 1
    assert [str(p) for p in doc.problems] == ["f.yaml:6:1: duplicate key 'm2' (first on line 5)"]


@pytest.mark.parametrize("text, expected", [
    ("- 1\n", "f.yaml:1:1: the top level must be a mapping"),
    ("", "f.yaml:1:1: the file is empty; expected a mapping"),
    ("a: 1\n---\nb: 2\n", "f.yaml:2:1: invalid YAML: expected a single document in the stream, "
                          "but found another document"),
    ("a: [1\n", "f.yaml:2:1: invalid YAML: while parsing a flow sequence, "
                 "expected ',' or ']', but got '<stream end>'"),
])
def test_unusable_documents(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_yaml(text, "f.yaml")
    assert [str(p) for p in caught.value.problems] == [expected]


@pytest.mark.parametrize("text, value, expected", [
    ("a: !!python/name:os.system x\n", {"a": None},
     "f.yaml:1:4: unsupported YAML value: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/name:os.system'"),
    ("a: !!binary aGVsbG8=\n", {"a": None}, "f.yaml:1:4: 'aGVsbG8=' is not a JSON value"),
    ("a: &x [*x]\n", {"a": [None]}, "f.yaml:1:4: a YAML alias refers to itself"),
    ("? [a]\n: 1\nb: 2\n", {"b": 2}, "f.yaml:1:3: a mapping key must be a plain value"),
])
def test_recoverable_problems(text: str, value: dict[str, object], expected: str) -> None:
    doc = parse_manifest_yaml(text, "f.yaml")
    assert doc.value == value
    assert [str(p) for p in doc.problems] == [expected]


def test_alias_expansion_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1},"
              f" *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 8)]
    with pytest.raises(ManifestError, match="too many YAML nodes"):
        parse_manifest_yaml("\n".join(lines) + "\n", "f.yaml")
