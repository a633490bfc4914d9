"""npm sets come from the registry only: the lock check and the options npm is given.

npm resolves the indirect dependencies itself, and a registry package may depend on a git
repository, a URL or a path; the review's evil-a@1.0.0 had its dependency cloned from
git+http://127.0.0.1:5898/evilgit.git. Crafted locks here: no network, no npm run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.deps.install import (
    NPM_DEFINITIONS,
    InstallError,
    _npm_source_options,
    check_npm_lock,
    npm_registry,
)

REGISTRY = "https://registry.npmjs.org/"
INTEGRITY = "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZ" \
            "WZUBlbGXYxxng=="
CLEAN = {
    "node_modules/is-number": {
        "version": "7.0.0", "integrity": INTEGRITY,
        "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz"},
    "node_modules/@scope/pkg": {
        "version": "1.0.0", "integrity": INTEGRITY,
        "resolved": "https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.0.tgz"},
    "node_modules/@scope/pkg/node_modules/inner": {"version": "1.0.0", "inBundle": True},
}
GIT = "git+http://127.0.0.1:5898/evilgit.git#a3290ac8536b6d679f563e9a82bfde99ca5ceebf"
BAD = {  # name: (its lock record, how the refusal describes its source)
    "evilgit": ({"version": "1.0.0", "resolved": GIT}, repr(GIT)),
    "local": ({"version": "1.0.0", "resolved": "file:../local-1.0.0.tgz",
               "integrity": INTEGRITY}, "'file:../local-1.0.0.tgz'"),
    "linked": ({"resolved": "../linked", "link": True}, "'../linked'"),
    "plain": ({"version": "1.0.0", "resolved": "http://registry.npmjs.org/plain/-/plain-1.0.0.tgz",
               "integrity": INTEGRITY}, "'http://registry.npmjs.org/plain/-/plain-1.0.0.tgz'"),
    "elsewhere": ({"version": "1.0.0", "integrity": INTEGRITY,
                   "resolved": "https://registry.npmjs.org.example.com/e/-/e-1.0.0.tgz"},
                  "'https://registry.npmjs.org.example.com/e/-/e-1.0.0.tgz'"),
    "unresolved": ({"version": "1.0.0", "integrity": INTEGRITY}, "None"),
}


def write_lock(folder: Path, packages: dict[str, Any]) -> Path:
    lock = folder / "package-lock.json"
    root = {"name": "actor-dependencies", "version": "0.0.0",
            "dependencies": {"is-number": "7.0.0"}}
    lock.write_text(json.dumps({"name": "actor-dependencies", "lockfileVersion": 3,
                                "packages": {"": root, **packages}}))
    return lock


def test_a_lock_from_the_registry_passes(tmp_path: Path) -> None:
    check_npm_lock(write_lock(tmp_path, CLEAN), REGISTRY)


@pytest.mark.parametrize("name", BAD)
def test_a_package_from_elsewhere_fails_the_build(tmp_path: Path, name: str) -> None:
    record, source = BAD[name]
    lock = write_lock(tmp_path, {**CLEAN, f"node_modules/is-number/node_modules/{name}": record})
    with pytest.raises(InstallError) as caught:
        check_npm_lock(lock, REGISTRY)
    assert str(caught.value) == (
        "npm resolved packages from outside the registry (only registry packages are "
        f"installed): {name} comes from {source}, not from the registry {REGISTRY}")


def test_a_package_without_integrity_fails_the_build(tmp_path: Path) -> None:
    bare = {"version": "1.0.0", "resolved": "https://registry.npmjs.org/b/-/b-1.0.0.tgz"}
    with pytest.raises(InstallError, match=re.escape(
            "b (https://registry.npmjs.org/b/-/b-1.0.0.tgz) has no integrity hash")):
        check_npm_lock(write_lock(tmp_path, {"node_modules/b": bare}), REGISTRY)


def test_every_problem_is_named(tmp_path: Path) -> None:
    lock = write_lock(tmp_path, {f"node_modules/{n}": r for n, (r, _) in BAD.items()})
    with pytest.raises(InstallError) as caught:
        check_npm_lock(lock, REGISTRY)
    assert [p.split()[0] for p in str(caught.value).split(": ", 1)[1].split("; ")] == list(BAD)


@pytest.mark.parametrize("text", ["", "[]", '{"lockfileVersion": 1, "dependencies": {}}'])
def test_an_unusable_lock_fails_the_build(tmp_path: Path, text: str) -> None:
    lock = tmp_path / "package-lock.json"
    lock.write_text(text)
    with pytest.raises(InstallError, match=re.escape("npm's package-lock.json")):
        check_npm_lock(lock, REGISTRY)


def test_a_mirror_is_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("npm_config_registry", raising=False)
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "https://npm.example.com/mirror")
    mirror = npm_registry()
    assert mirror == "https://npm.example.com/mirror/"
    mirrored = {"node_modules/a": {"resolved": "https://npm.example.com/mirror/a/-/a-1.0.0.tgz",
                                   "integrity": INTEGRITY}}
    check_npm_lock(write_lock(tmp_path, mirrored), mirror)
    with pytest.raises(InstallError, match=re.escape(
            "a comes from 'https://npm.example.com/mirror/a/")):
        check_npm_lock(write_lock(tmp_path, mirrored), REGISTRY)


def test_the_registry_must_be_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NPM_CONFIG_REGISTRY", raising=False)
    monkeypatch.delenv("npm_config_registry", raising=False)
    assert npm_registry() == REGISTRY
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:5898/")
    with pytest.raises(InstallError, match=re.escape(
            "the npm registry http://127.0.0.1:5898/ is not an https URL")):
        npm_registry()


def test_npm_is_told_to_refuse_other_sources_where_it_can(tmp_path: Path) -> None:
    cli = tmp_path / "bin" / "npm-cli.js"
    assert _npm_source_options(cli) == []  # an npm without them: nothing it would not know
    definitions = tmp_path / NPM_DEFINITIONS
    definitions.parent.mkdir(parents=True)
    definitions.write_text("  'allow-git': new Definition('allow-git', {\n")  # npm 11.10
    assert _npm_source_options(cli) == ["--allow-git=none"]
    definitions.write_text("".join(f"'{o}': new Definition('{o}'\n" for o in
                                   ("allow-directory", "allow-file", "allow-git", "allow-remote")))
    assert _npm_source_options(cli) == ["--allow-git=none", "--allow-remote=none",
                                        "--allow-file=none", "--allow-directory=none"]
