"""bench/schema_suite.py on a miniature suite: scoring, remote refusals, the reference
beside, through the loader and through a live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.schema_suite import main


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    tests = tmp_path / "tests" / "draft2020-12"
    tests.mkdir(parents=True)
    (tmp_path / "remotes").mkdir()
    (tmp_path / "remotes" / "integer.json").write_text('{"type": "integer"}')
    (tests / "mini.json").write_text(json.dumps([
        {"description": "minimum", "schema": {"minimum": 1},
         "tests": [{"description": "below", "data": 0, "valid": False},
                   {"description": "at", "data": 1, "valid": True}]},
        {"description": "remote ref", "schema": {"$ref": "http://localhost:1234/integer.json"},
         "tests": [{"description": "an integer", "data": 1, "valid": True}]},
        {"description": "a wrong expectation", "schema": {"type": "string"},
         "tests": [{"description": "claims 1 is a string", "data": 1, "valid": True}]},
    ]))
    return tmp_path / "tests"


@pytest.mark.parametrize("through", [[], ["--live"]], ids=["loader", "live server"])
def test_scores_a_suite(suite: Path, through: list[str],
                        capsys: pytest.CaptureFixture[str]) -> None:
    """The same score through the loader and through a running server (each test on an
    inport and through an outport there)."""
    assert main(["--suite", str(suite), "--draft", "draft2020-12", "-v", *through]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("draft2020-12: 2/3 right (66.7%), 0 wrong where jsonschema is right, "
                      "1 wrong like jsonschema, 1 need a remote document (refused at load)")
    assert out[1].startswith("    remote: mini.json: remote ref: ")
    assert "remote documents are never fetched" in out[1]


def test_a_refused_group_counts_as_ours_only_where_the_reference_is_right(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Python's re (the reference's) cannot compile \\c1 either: a miss of both, not ours."""
    tests = tmp_path / "tests" / "draft2020-12"
    tests.mkdir(parents=True)
    (tmp_path / "remotes").mkdir()
    (tests / "mini.json").write_text(json.dumps([
        {"description": "bad escape", "schema": {"pattern": "^\\c1$"},
         "tests": [{"description": "a string", "data": "x", "valid": False}]},
        {"description": "inline flag", "schema": {"pattern": "(?i)^a$"},
         "tests": [{"description": "upper", "data": "A", "valid": True}]},
    ]))
    assert main(["--suite", str(tmp_path / "tests"), "--draft", "draft2020-12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("draft2020-12: 0/2 right (0.0%), 1 wrong where jsonschema is right, "
                      "1 wrong like jsonschema, 0 need a remote document (refused at load)")
    assert out[1] == "    mini.json: inline flag / upper (refused)"


def test_format_tests_run_only_with_format_assertion(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "tests" / "draft2020-12"
    (tests / "optional" / "format").mkdir(parents=True)
    (tmp_path / "remotes").mkdir()
    (tests / "optional" / "format" / "date-time.json").write_text(json.dumps([
        {"description": "date-time", "schema": {"format": "date-time"},
         "tests": [{"description": "month 13", "data": "2024-13-01T00:00:00Z", "valid": False}]},
    ]))
    suite = str(tmp_path / "tests")
    assert main(["--suite", suite, "--optional"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("draft2020-12: 0/0 right")
    (tests / "mini.json").write_text(json.dumps([
        {"description": "annotation", "schema": {"format": "date-time"},
         "tests": [{"description": "by default", "data": "2024-13-01T00:00:00Z", "valid": True}]},
    ]))
    assert main(["--suite", suite, "--draft", "draft2020-12", "--format-assertion"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("draft2020-12: 1/1 right")
