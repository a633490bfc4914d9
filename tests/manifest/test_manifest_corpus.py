"""The corpus of broken manifests: each case yields exactly the problems it announces."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from service.manifest.lint import lint_main, lint_paths
from service.settings import Settings

BROKEN = Path(__file__).parent / "broken"
EXPECT = re.compile(r"^# expect: (.+)$", re.M)


def _cases() -> list[str]:
    """Every manifest file, and every folder, directly in the corpus."""
    entries = sorted(BROKEN.iterdir())
    return [e.name for e in entries if e.is_dir() or e.suffix == ".yaml"]


def _expected(case: Path) -> list[str]:
    files = sorted(case.rglob("*.yaml")) if case.is_dir() else [case]
    return sorted(m for f in files for m in EXPECT.findall(f.read_text()))


def test_corpus_has_every_kind_of_mistake() -> None:
    names = set(_cases())
    assert {"typo_keys.yaml", "wrong_type.yaml", "missing_script.yaml", "outside_tree.yaml",
            "bad_port_schema.yaml", "bad_ref.yaml", "over_limit.yaml", "bad_example.yaml",
            "dup_ids", "dup_keys.yaml", "js_syntax.yaml", "no_process.yaml"} <= names
    for case in names:
        assert _expected(BROKEN / case), f"{case} announces no problem"


@pytest.mark.parametrize("case", _cases())
def test_case_reports_exactly_its_problems(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    problems = lint_paths([case], Settings())
    assert sorted(str(p) for p in problems) == _expected(BROKEN / case)


def test_whole_corpus_in_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    out = io.StringIO()
    assert lint_main(["."], Settings(), "text", out) == 1
    every = sorted(line for case in _cases() for line in _expected(BROKEN / case))
    assert sorted(out.getvalue().splitlines()) == every


def test_symlink_leading_out_of_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_text("async def process(context):\n    return None\n")
    actors = tmp_path / "actors"
    actors.mkdir()
    (actors / "sneaky.py").symlink_to(outside)
    (actors / "sneaky.yaml").write_text("id: sneaky\nlanguage: python\nscript: sneaky.py\n")
    monkeypatch.chdir(tmp_path)
    problems = lint_paths(["actors"], Settings())
    assert [str(p) for p in problems] == [
        "actors/sneaky.yaml:3:9: script: 'sneaky.py' is a symlink leading out of the "
        "manifest's folder"]


def test_symlinked_folder_leading_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.py").write_text("def process(context):\n    return None\n")
    actors = tmp_path / "actors"
    actors.mkdir()
    (actors / "lib").symlink_to(tmp_path / "lib", target_is_directory=True)
    (actors / "x.yaml").write_text("id: x\nlanguage: python\nscript: lib/x.py\n")
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in lint_paths(["actors/x.yaml"], Settings())] == [
        "actors/x.yaml:3:9: script: 'lib/x.py' is a symlink leading out of the manifest's folder"]


def test_python_syntax_error_is_reported_in_the_script(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Written here rather than kept in the corpus: ruff checks every .py under tests/.
    (tmp_path / "bad.py").write_text("async def process(context):\n    return {\n")
    (tmp_path / "bad.yaml").write_text("id: bad\nlanguage: python\nscript: bad.py\n")
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in lint_paths(["bad.yaml"], Settings())] == [
        "bad.py:2:12: invalid Python: '{' was never closed"]
