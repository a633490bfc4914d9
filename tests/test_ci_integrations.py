"""The pre-commit hook (.pre-commit-hooks.yaml) and the GitHub composite action (action.yml),
run the way their tools run them.

- pre-commit: ``pre-commit try-repo`` against this checkout (pre-commit is a dev extra), in a
  scratch git repository holding actor manifests. pre-commit builds the hook's own virtualenv
  from this package, so that test needs the package index (or pip's cache), like
  ``pre-commit`` itself; it is marked slow. A fast test runs the hook's ``entry`` and
  ``args`` exactly as declared, as pre-commit would with ``pass_filenames: false``.
- GitHub: no runner here, so a small composite-action runner executes the action's ``run``
  steps as the runner does (``bash --noprofile --norc -eo pipefail``, ``${{ inputs.* }}``
  substituted with the given inputs or their defaults, ``GITHUB_ACTION_PATH`` set); ``uses:``
  steps (actions/setup-python) are the runner's business and are skipped: the Python on PATH
  stands for the one it sets up. The fast tests run the lint step with this virtualenv; the
  slow one runs every step, the install into a fresh virtualenv included.

The two slow tests wait on the package index for a minute or two each, so they run only with
``CI_TOOL_TESTS=1`` (``.ci/run`` sets it in a step of its own).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMEOUT_S = 600
SLOW_RUN = pytest.mark.skipif(os.environ.get("CI_TOOL_TESTS") != "1",
                              reason="installs the package from the index: set CI_TOOL_TESTS=1")
BROKEN = "id: doubler\nlanguage: python\nscript: doubler.py\ntimeout: 5\n"


def hook() -> dict[str, Any]:
    (only,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    return dict(only)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's repository: a copy of the example actors, committed."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "manifests", repo / "manifests")
    shutil.copytree(ROOT / "schemas", repo / "schemas")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "actors")
    return repo


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _break_a_manifest(project: Path) -> None:
    (project / "manifests" / "copy").mkdir()
    (project / "manifests" / "copy" / "doubler.py").write_text("def process(c):\n    pass\n")
    (project / "manifests" / "copy" / "doubler.yaml").write_text(BROKEN)


# --- pre-commit ---


def test_the_hook_lints_the_whole_folder() -> None:
    declared = hook()
    assert declared["id"] == "service-lint"
    assert declared["language"] == "python"  # pre-commit installs this package for it
    assert declared["pass_filenames"] is False  # the duplicate-id rule needs every manifest
    assert re.search(declared["files"], "manifests/doubler/doubler.yaml")
    assert re.search(declared["files"], "manifests/doubler/doubler.py")


def _run_entry(project: Path) -> subprocess.CompletedProcess[str]:
    declared = hook()
    command = [*shlex.split(declared["entry"]), *declared.get("args", [])]
    return subprocess.run(command, cwd=project, env=_clean_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def test_the_hook_entry_as_declared(project: Path) -> None:
    assert _run_entry(project).returncode == 0
    _break_a_manifest(project)
    result = _run_entry(project)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "manifests/copy/doubler.yaml:4:1: unknown key 'timeout'",
        "manifests/doubler/doubler.yaml:3:5: id 'doubler' is already used by "
        "manifests/copy/doubler.yaml"]


@pytest.mark.slow
@SLOW_RUN
@pytest.mark.timeout(TIMEOUT_S)
def test_pre_commit_try_repo(project: Path, tmp_path: Path) -> None:
    if shutil.which("pre-commit", path=str(BIN)) is None:
        pytest.skip("pre-commit is not installed (it is in the dev extra)")
    env = _clean_env(PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"))

    def try_repo() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "pre-commit"), "try-repo", str(ROOT), "service-lint",
                               "--all-files"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)

    clean = try_repo()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert re.search(r"lint actor manifests\.+Passed", clean.stdout), clean.stdout
    _break_a_manifest(project)
    broken = try_repo()
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "is already used by" in broken.stdout
    assert re.search(r"lint actor manifests\.+Failed", broken.stdout)


# --- the GitHub composite action ---


def action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
    return data


def _substitute(text: str, inputs: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression == "github.action_path":
            return str(ROOT)
        assert expression.startswith("inputs."), f"unsupported expression {expression}"
        return inputs[expression.removeprefix("inputs.")]

    return re.sub(r"\$\{\{(.*?)\}\}", value, text)


def run_action(workspace: Path, given: dict[str, str], *, python_bin: Path,
               skip: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the action's steps as a GitHub runner does; stop at the first failing step."""
    declared = action()
    assert declared["runs"]["using"] == "composite"
    inputs = {name: spec.get("default", "") for name, spec in declared["inputs"].items()}
    unknown = set(given) - set(inputs)
    assert not unknown, f"not inputs of the action: {unknown}"
    inputs.update(given)
    output = ""
    result = subprocess.CompletedProcess[str]([], 0, "", "")
    for step in declared["runs"]["steps"]:
        if "uses" in step or step.get("name") in skip:
            continue
        assert step["shell"] == "bash"
        script = workspace.parent / "step.sh"
        script.write_text(_substitute(step["run"], inputs))
        env = _clean_env(GITHUB_ACTION_PATH=str(ROOT), GITHUB_WORKSPACE=str(workspace),
                         **{k: _substitute(str(v), inputs) for k, v in step.get("env", {}).items()})
        env["PATH"] = f"{python_bin}{os.pathsep}{env['PATH']}"
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                                 str(script)], cwd=workspace, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT_S)
        output += result.stdout + result.stderr
        if result.returncode != 0:
            break
    return subprocess.CompletedProcess(result.args, result.returncode, output, "")


def test_action_inputs_are_documented() -> None:
    for name, spec in action()["inputs"].items():
        assert spec.get("description"), name


def test_action_annotates_problems_and_fails(project: Path) -> None:
    ok = run_action(project, {}, python_bin=BIN, skip=("Install the linter",))
    assert ok.returncode == 0, ok.stdout
    _break_a_manifest(project)
    broken = run_action(project, {}, python_bin=BIN, skip=("Install the linter",))
    assert broken.returncode == 1
    assert broken.stdout.splitlines() == [
        "::error file=manifests/copy/doubler.yaml,line=4,col=1::unknown key 'timeout'",
        "::error file=manifests/doubler/doubler.yaml,line=3,col=5::id 'doubler' is already "
        "used by manifests/copy/doubler.yaml"]


def test_action_inputs_paths_and_allow_empty(project: Path) -> None:
    (project / "empty").mkdir()
    skip = ("Install the linter",)
    two = run_action(project, {"paths": "manifests/doubler manifests/ticker"},
                     python_bin=BIN, skip=skip)
    assert two.returncode == 0, two.stdout
    empty = run_action(project, {"paths": "empty/", "format": "text"}, python_bin=BIN,
                       skip=skip)
    assert empty.returncode == 1
    assert "no manifests (*.yaml, *.yml) in this folder" in empty.stdout
    allowed = run_action(project, {"paths": "empty/", "allow-empty": "true"}, python_bin=BIN,
                         skip=skip)
    assert allowed.returncode == 0, allowed.stdout


@pytest.mark.slow
@SLOW_RUN
@pytest.mark.timeout(TIMEOUT_S)
def test_action_every_step_in_a_fresh_python(project: Path, tmp_path: Path) -> None:
    """The install step too: a fresh virtualenv gets the package from the action's checkout
    (pip needs the package index, or its cache), without the microVM SDK."""
    fresh = tmp_path / "runner-python"
    venv.create(fresh, with_pip=True)
    result = run_action(project, {}, python_bin=fresh / "bin")
    assert result.returncode == 0, result.stdout
    probe = subprocess.run([str(fresh / "bin" / "python"), "-c", "import microsandbox"],
                           capture_output=True, text=True)
    assert probe.returncode != 0  # a lint-only install does not pull the 112 MB SDK
