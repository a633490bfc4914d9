"""What a manifest may declare: exact pins only, each problem at its YAML node."""

from __future__ import annotations

from pathlib import Path

import pytest
from deps_support import write_actor

from service.deps.cache import entry_key
from service.deps.spec import Dependencies, Package, SpecError, npm_package, python_package
from service.manifest.lint import lint_paths
from service.manifest.loader import load_manifest
from service.settings import Settings


@pytest.mark.parametrize(("text", "expected"), [
    ("six==1.16.0", Package("six", "1.16.0")),
    ("Six == 1.16", Package("six", "1.16")),
    ("python_dateutil==2.9.0.post0", Package("python-dateutil", "2.9.0.post0")),
    ("requests[socks,Security]==2.31.0", Package("requests", "2.31.0", ("security", "socks"))),
])
def test_pinned_python_requirements(text: str, expected: Package) -> None:
    assert python_package(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("six", "is not pinned to one version: write six==VERSION"),
    ("six>=1.16", "is not pinned"),
    ("six~=1.16", "is not pinned"),
    ("six==1.*", "is not pinned"),
    ("six===1.16.0", "is not pinned"),
    ("six==1.16.0,<2", "is not pinned"),
    ("six @ https://example.invalid/six-1.16.0-py2.py3-none-any.whl", "installs from a URL"),
    ("six @ file:///tmp/six", "installs from a URL"),
    ("six==1.16.0; python_version > '3'", "environment marker"),
    ("./six", "is not a valid requirement"),
    ("git+https://github.com/benjaminp/six", "is not a valid requirement"),
    ("-e .", "is not a valid requirement"),
    ("six==", "is not a valid requirement"),
    ("six==1." + "9" * 5000, "is not a valid version"),  # past Python's int() of text
])
def test_unpinned_or_foreign_python_requirements_are_refused(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=why.replace("(", r"\(").replace("[", r"\[")):
        python_package(text)


def test_npm_exact_versions() -> None:
    assert npm_package("is-number", "7.0.0") == Package("is-number", "7.0.0")
    assert npm_package("@scope/pkg.js", "1.0.0-beta.1+build.5").version == "1.0.0-beta.1+build.5"


@pytest.mark.parametrize("version", ["^7.0.0", "~7.0.0", "7.x", "7", "latest", ">=7.0.0",
                                     "v7.0.0", "file:../is-number", "npm:other@1.0.0",
                                     "git+https://github.com/jonschlinkert/is-number", 7,
                                     "7.0.0\n"])
def test_npm_ranges_tags_and_urls_are_refused(version: object) -> None:
    with pytest.raises(SpecError, match="is not an exact version"):
        npm_package("is-number", version)


@pytest.mark.parametrize("name", ["Is-Number", "_private", ".hidden", "a b", "x" * 215,
                                  "is-number\n", "-lead", "~tilde", "node_modules",
                                  "favicon.ico"])
def test_invalid_npm_names_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="is not a valid npm package name"):
        npm_package(name, "1.0.0")


def test_lint_places_every_dependency_problem(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_actor(tmp_path, "py", """\
        dependencies:
          python:
            - six
            - Six==1.16.0
            - six==1.17.0
          javascript: {is-number: 7.0.0}
          ruby: [rails]
        """)
    write_actor(tmp_path, "js", """\
        dependencies:
          javascript:
            is-number: ^7.0.0
            Bad_Name: 1.0.0
        """, source="async function process(context) {}\n", language="javascript")
    problems = [str(p) for p in lint_paths([tmp_path], Settings())]
    assert problems == [
        "js.yaml:6:16: dependencies.javascript.is-number: is-number: '^7.0.0' is not an "
        "exact version; write X.Y.Z (no range, tag, URL, path or git reference)",
        "js.yaml:7:5: dependencies.javascript.Bad_Name: 'Bad_Name' is not a valid npm "
        "package name",
        "py.yaml:6:7: dependencies.python[0]: 'six' is not pinned to one version: "
        "write six==VERSION",
        "py.yaml:8:7: dependencies.python[2]: six is listed twice (first as "
        "dependencies.python[1])",
        "py.yaml:9:3: dependencies.javascript: a python actor cannot use javascript packages",
        "py.yaml:10:3: dependencies: unknown key 'ruby'",
    ]


def test_a_clean_manifest_loads_its_normalized_set(tmp_path: Path) -> None:
    manifest = write_actor(tmp_path, "py", """\
        dependencies:
          python: [Six==1.16.0, python_dateutil==2.9.0.post0]
        """)
    actor = load_manifest(manifest, Settings())
    assert actor.dependencies == Dependencies(
        "python", (Package("python-dateutil", "2.9.0.post0"), Package("six", "1.16.0")))
    assert actor.dependencies.position == (4, 1)  # the key: where an install failure points
    assert actor.deps_entry is None  # built by the runtime, never by the loader


def test_no_dependencies_is_none(tmp_path: Path) -> None:
    manifest = write_actor(tmp_path, "py", "dependencies: {python: []}\n")
    assert load_manifest(manifest, Settings()).dependencies is None


def test_the_key_is_the_set_the_language_and_the_interpreter() -> None:
    py311 = {"python_version": "3.11", "implementation_name": "cpython"}
    a = Dependencies("python", (Package("a", "1"), Package("b", "2")))
    same = Dependencies("python", (Package("a", "1"), Package("b", "2")), position=(9, 9))
    assert entry_key(a, py311) == entry_key(same, py311)
    assert entry_key(a, py311) != entry_key(a, {**py311, "python_version": "3.12"})
    assert entry_key(a, py311) != entry_key(
        Dependencies("python", (Package("a", "1"), Package("b", "3"))), py311)
    assert entry_key(a, py311) != entry_key(Dependencies("javascript", a.packages), py311)
