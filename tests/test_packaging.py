"""Static checks of the first-run and deployment files: what a new user and CI rely on.

No Docker engine is needed: the compose file, the Dockerfile, pyproject.toml and the
settings file are parsed and checked; the Makefile and scripts are run with make -n,
bash -n or with fakes that stop before they change anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The keys and defaults that shared/spec/manifest.md ("Settings") documents.
DOCUMENTED_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 5556,
    "manifest_paths": ["manifests"],
    "allowed_roots": ["manifests"],
    "backend": "auto",
    "max_message_bytes": 1048576,
    "log_level": "info",
    "log_format": "text",
    "limits": {"cpus": 1, "memory_mb": 128, "timeout_s": 10, "network": False, "pids": 64,
               "output_bytes": 1048576},
    "limits_max": {"cpus": 4, "memory_mb": 2048, "timeout_s": 300, "pids": 512,
                   "output_bytes": 16777216, "network": False, "network_actors": []},
    "auth": {"tokens": [], "allow_anonymous": False, "admin_tokens": []},
    "pool_max": {"min_warm": 8, "max_workers": 64, "max_queue": 1024},
    "capacity": {"max_sandboxes": 256},  # memory_mb: from the machine, left out
    "connections": {"max_connections": 512, "header_timeout_s": 10, "max_in_flight": 64,
                    "max_batch": 100, "max_response_bytes": 67108864, "max_id_chars": 256,
                    "write_timeout_s": 30, "allowed_origins": [], "allowed_hosts": []},
}
RUNTIME_DEPENDENCIES = {"aiohttp", "pyyaml", "jsonschema", "referencing",
                        "dynaconf", "prometheus-client"}


def compose_service() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"]["runtime"]
    return service


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def instruction_args(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


# docker-compose.yml


def test_compose_publishes_the_port_and_builds_the_dockerfile() -> None:
    service = compose_service()
    assert service["build"] == "."
    assert "5556:5556" in service["ports"]
    assert service["restart"] == "unless-stopped"


def test_compose_mounts_manifests_read_only_and_kvm_only_in_the_override() -> None:
    service = compose_service()
    # A device the host lacks stops `docker compose up`: /dev/kvm is opt-in.
    assert "devices" not in service
    override = yaml.safe_load((ROOT / "docker-compose.kvm.yml").read_text())
    assert override == {"services": {"runtime": {"devices": ["/dev/kvm:/dev/kvm"]}}}
    assert "./manifests:/app/manifests:ro" in service["volumes"]
    assert "./schemas:/app/schemas:ro" in service["volumes"]


def test_compose_requires_a_token_and_listens_on_all_addresses() -> None:
    env = compose_service()["environment"]
    assert env["SERVICE_HOST"] == "0.0.0.0"
    # ${VAR:?message} makes compose stop with the message when the token is unset.
    assert re.fullmatch(r'\["\$\{SERVICE_TOKEN:\?[^}]+\}"\]', env["SERVICE_AUTH__TOKENS"])


def test_compose_healthcheck_hits_healthz() -> None:
    check = compose_service()["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "http://127.0.0.1:5556/healthz" in " ".join(check["test"])


def test_compose_loosens_only_what_bubblewrap_needs() -> None:
    service = compose_service()
    assert not service.get("privileged", False)
    assert set(service["security_opt"]) == {
        "seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}


def test_compose_runs_redis_for_state_and_does_not_publish_it() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["state-redis"]
    assert redis["image"].startswith("redis:")
    assert "ports" not in redis and "profiles" not in redis  # only the runtime reaches it
    runtime = compose_service()
    assert runtime["environment"]["SERVICE_STATE__REDIS_URL"] == "redis://state-redis:6379/0"
    assert runtime["depends_on"]["state-redis"]["condition"] == "service_healthy"
    worker = compose["services"]["worker"]["environment"]
    assert worker["SERVICE_STATE__REDIS_URL"].endswith("@redis:6379/1")  # shared by workers


def test_setup_installs_redis_server_for_the_tests() -> None:
    assert "missing+=(redis-server)" in (ROOT / "scripts" / "setup.sh").read_text()


# Dockerfile


def test_dockerfile_base_exposes_and_runs_the_service() -> None:
    assert instruction_args("FROM")[-1] == "python:3.11-slim-bookworm"  # the final stage
    assert instruction_args("EXPOSE") == ["5556"]
    assert instruction_args("CMD") == [
        '["python", "-m", "service", "--config", "/app/config/settings.toml"]']
    assert "SERVICE_HOST=0.0.0.0" in " ".join(instruction_args("ENV"))


def test_dockerfile_installs_the_sandbox_packages() -> None:
    runs = " ".join(instruction_args("RUN"))
    install = re.search(r"apt-get install ([^&]+)", runs)
    assert install
    assert {"bubblewrap", "python3"} <= set(install.group(1).split())
    assert "nodejs" not in install.group(1).split()  # Debian bookworm's is Node 18, end of life


def test_dockerfile_ships_node_20_on_path() -> None:
    """Node 20 from the official image's binary, where the default sandbox.node finds it."""
    stages = dict(arg.split(" AS ") for arg in instruction_args("FROM") if " AS " in arg)
    assert stages == {"node:20-bookworm-slim": "node"}
    assert "--from=node /usr/local/bin/node /opt/node/bin/node" in instruction_args("COPY")
    assert "PATH=/opt/node/bin:$PATH" in instruction_args("ENV")


def test_dockerfile_installs_the_microvm_extra() -> None:
    runs = " ".join(instruction_args("RUN"))
    assert "['optional-dependencies']['microvm']" in runs


def test_dockerfile_installs_the_package_editable_in_app() -> None:
    # The manifest loader reads schemas/ beside the package, so it must stay in /app.
    assert instruction_args("WORKDIR") == ["/app"]
    assert "pip install --no-deps -e ." in instruction_args("RUN")


def test_dockerfile_healthcheck_uses_python_not_curl() -> None:
    (check,) = instruction_args("HEALTHCHECK")
    assert "urllib.request.urlopen(" in check
    assert "/healthz" in check
    assert "curl" not in check


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    sources = [src for args in instruction_args("COPY") if not args.startswith("--from=")
               for src in args.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the project"
        assert src not in ignored, f"COPY {src}: excluded by .dockerignore"


# pyproject.toml


def test_pyproject_declares_the_console_script() -> None:
    assert pyproject()["project"]["scripts"]["service"] == "service.cli:main"


def test_pyproject_lists_the_runtime_dependencies() -> None:
    project = pyproject()["project"]
    names = {requirement_name(r) for r in project["dependencies"]}
    assert names >= RUNTIME_DEPENDENCIES
    assert project["requires-python"] == ">=3.11"


def test_microsandbox_is_the_microvm_extra_and_setup_installs_it() -> None:
    project = pyproject()["project"]
    assert "microsandbox" not in {requirement_name(r) for r in project["dependencies"]}
    assert [requirement_name(r) for r in project["optional-dependencies"]["microvm"]] == [
        "microsandbox"]
    # the dev/test setup still installs it: the microVM tests run wherever KVM allows
    assert "pip install -q -e '.[dev,microvm]'" in (ROOT / "scripts" / "setup.sh").read_text()


def test_lint_never_imports_the_microvm_sdk() -> None:
    """A lint-only install (no [microvm]) works: nothing on lint's path imports the SDK."""
    code = ("import sys; sys.modules['microsandbox'] = None\n"  # importing it now fails
            "from service.cli import main\n"
            "sys.exit(main(['lint', 'manifests']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_py_typed_ships_with_the_package() -> None:
    assert (ROOT / "service" / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["service"]


def test_pyproject_dev_extra_has_the_ci_tools() -> None:
    dev = {requirement_name(r) for r in pyproject()["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "pytest-asyncio", "pytest-aiohttp", "pytest-timeout", "ruff", "mypy"} <= dev


# config/settings.toml


def test_settings_file_holds_every_documented_key_with_its_default() -> None:
    settings = tomllib.loads((ROOT / "config" / "settings.toml").read_text())
    default = settings["default"]
    for key, value in DOCUMENTED_SETTINGS.items():
        assert default[key] == value, key


def test_settings_file_has_a_production_environment() -> None:
    settings = tomllib.loads((ROOT / "config" / "settings.toml").read_text())
    production = settings["production"]
    assert production["host"] == "0.0.0.0"
    assert "tokens" not in production.get("auth", {}), "tokens belong in the environment"


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    settings = tomllib.loads((ROOT / "config" / "settings.toml").read_text())["default"]
    keys = [k for k, v in settings.items() if not isinstance(v, dict)]
    keys += [k for v in settings.values() if isinstance(v, dict) for k in v]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing
    for table in (k for k, v in settings.items() if isinstance(v, dict)):
        assert f"[default.{table}]" in doc, table


# docs/manifest.md


def test_every_manifest_schema_key_is_documented() -> None:
    doc = (ROOT / "docs" / "manifest.md").read_text()
    schema = yaml.safe_load((ROOT / "schemas" / "manifest.schema.json").read_text())
    props = schema["properties"]
    defs = schema["$defs"]
    keys = set(props)
    for nested in ("config", "limits", "pool"):
        keys |= set(props[nested]["properties"])
    for definition in ("inport", "outport", "example"):
        keys |= set(defs[definition]["properties"])
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing


def test_manifest_doc_shows_the_editor_modeline() -> None:
    """As the shipped manifests have it: one actor per folder, two levels below the root."""
    doc = (ROOT / "docs" / "manifest.md").read_text()
    modeline = "# yaml-language-server: $schema=../../schemas/manifest.schema.json"
    assert modeline in doc
    assert (ROOT / "manifests" / "doubler" / "doubler.yaml").read_text().startswith(modeline)


# Makefile, scripts/setup.sh, .ci/run


def make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Flags of an outer make (`make test` runs this file) must not leak into these runs.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_make_serve_sets_up_then_runs_the_server() -> None:
    out = make("-n", "serve").stdout
    assert "scripts/setup.sh" in out
    assert ".venv/bin/python -m service --config config/settings.toml" in out


def test_make_test_sets_up_then_runs_pytest() -> None:
    out = make("-n", "test").stdout
    assert "scripts/setup.sh" in out
    assert ".venv/bin/python -m pytest" in out


@pytest.mark.parametrize(("pytest_exit", "make_fails"), [(0, False), (1, True), (5, True)])
def test_make_test_fails_when_pytest_fails_or_collects_nothing(
    tmp_path: Path, pytest_exit: int, make_fails: bool
) -> None:
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexit {pytest_exit}\n")
    fake.chmod(0o755)
    # -o setup: take setup as done, so only the test recipe runs, with the fake interpreter.
    result = make("-s", "-o", "setup", "test", f"PY={fake}")
    assert (result.returncode != 0) is make_fails
    assert ("no tests were collected" in result.stderr) is (pytest_exit == 5)


def test_setup_says_what_to_install_when_it_may_not_use_apt() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SETUP_SKIP_SYSTEM"}
    env |= {"SETUP_APT": "no", "SERVICE_SANDBOX__NODE": "/nonexistent/node"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "sudo apt-get install nodejs" in result.stderr


@pytest.mark.parametrize("script", ["scripts/setup.sh", ".ci/run"])
def test_scripts_are_valid_bash(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_test_command_first() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    commands = [ln.strip() for ln in ci.read_text().splitlines()
                if ln.strip().startswith("step ")]
    assert "make" in commands[0] and " test " in commands[0]
    assert any("service lint manifests/" in c for c in commands)
    assert any("ruff check" in c for c in commands)
    assert any("mypy" in c for c in commands)
