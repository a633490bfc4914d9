"""Real sets from the real registries: built once, shared, verified, mounted read-only."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from deps_support import RuntimeFactory, service, write_actor

from service.deps.build import DepsBuilder, DepsError
from service.deps.cache import MARKER, files_of
from service.deps.spec import Dependencies, Package
from service.errors import ManifestInvalid
from service.manifest.loader import load_manifest
from service.server import create_app
from service.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or shutil.which("npm") is None,
                                reason="bubblewrap or npm not installed")
SIX_16 = Dependencies("python", (Package("six", "1.16.0"),))
PROBE_SANDBOX = """\
import os

CACHE = "CACHE_PATH"


async def process(context):
    try:
        open("/deps/written", "w")
        wrote = "yes"
    except OSError as exc:
        wrote = exc.strerror
    with open("/proc/net/dev") as net:
        interfaces = sorted(line.split(":")[0].strip() for line in net.readlines()[2:])
    await context.send_output("out", {"wrote": wrote, "interfaces": interfaces,
                                      "mounts": sorted(os.listdir("/")),
                                      "cache_visible": os.path.exists(CACHE)})
"""


def sources(entry: Path) -> dict[str, str]:
    """An entry's files but the byte code (marshal output varies from one build to the next)."""
    return {k: v for k, v in files_of(entry).items() if "__pycache__" not in k}


def settings_for(deps_dir: Path, *paths: Path) -> Settings:
    return Settings(manifest_paths=paths, allowed_roots=paths, deps_dir=deps_dir,
                    backend="process")


async def test_two_versions_of_one_package_side_by_side(
        actors_dir: Path, shared_deps_dir: Path, make_runtime: RuntimeFactory) -> None:
    write_actor(actors_dir / "old", "six_old", "dependencies: {python: [six==1.16.0]}\n")
    write_actor(actors_dir / "new", "six_new", "dependencies: {python: [six==1.17.0]}\n")
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir))
    old = (await runtime.process("six_old", {}))["outputs"]["out"]
    new = (await runtime.process("six_new", {}))["outputs"]["out"]
    # Each sees its own pinned version, from its own mount, over the system's dist-packages
    assert old == {"version": "1.16.0", "file": "/deps/six.py",
                   "deps": ["__pycache__", "six-1.16.0.dist-info", "six.py"]}
    assert new == {"version": "1.17.0", "file": "/deps/six.py",
                   "deps": ["__pycache__", "six-1.17.0.dist-info", "six.py"]}
    entries = {runtime.get(i).deps_entry for i in ("six_old", "six_new")}
    assert len(entries) == 2 and all(e is not None and e.parent == shared_deps_dir.resolve()
                                     for e in entries)


async def test_two_npm_versions_side_by_side(actors_dir: Path, shared_deps_dir: Path,
                                             make_runtime: RuntimeFactory) -> None:
    source = """\
        async function process(context) {
          await context.sendOutput('out', require('is-number/package.json').version);
        }
        module.exports = { process };
        """
    for version in ("6.0.0", "7.0.0"):  # 6.0.0 brings its own dependency (kind-of)
        write_actor(actors_dir / version, f"isnum{version[0]}",
                    f"dependencies: {{javascript: {{is-number: {version}}}}}\n",
                    language="javascript", source=source)
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir))
    assert (await runtime.process("isnum6", {}))["outputs"]["out"] == "6.0.0"
    assert (await runtime.process("isnum7", {}))["outputs"]["out"] == "7.0.0"


async def test_the_set_is_read_only_and_the_actor_offline(
        actors_dir: Path, shared_deps_dir: Path, make_runtime: RuntimeFactory) -> None:
    write_actor(actors_dir, "probe", "dependencies: {python: [six==1.16.0]}\n",
                source=PROBE_SANDBOX.replace("CACHE_PATH", str(shared_deps_dir)))
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir))
    seen = (await runtime.process("probe", {}))["outputs"]["out"]
    assert seen["wrote"] == "Read-only file system"
    assert seen["interfaces"] == ["lo"]
    assert "deps" in seen["mounts"] and "node_modules" not in seen["mounts"]
    assert seen["cache_visible"] is False  # only its own set, never the cache
    entry = runtime.get("probe").deps_entry
    assert entry is not None
    for line in files_of(entry).values():  # sealed: readable by every sandbox uid, by no one
        mode = line.split()[0]  # writable but the owner
        assert mode in ("755", "644", "link"), line


async def test_javascript_set(actors_dir: Path, shared_deps_dir: Path,
                              make_runtime: RuntimeFactory) -> None:
    write_actor(actors_dir, "isnum", "dependencies: {javascript: {is-number: 7.0.0}}\n",
                language="javascript", source="""\
        const isNumber = require('is-number');
        const fs = require('fs');
        async function process(context) {
          const version = require('is-number/package.json').version;
          await context.sendOutput('out', {version, yes: isNumber('4.5'), no: isNumber('x'),
                                           modules: fs.readdirSync('/node_modules')});
        }
        module.exports = { process };
        """)
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir))
    seen = (await runtime.process("isnum", {}))["outputs"]["out"]
    assert seen == {"version": "7.0.0", "yes": True, "no": False,
                    "modules": [".package-lock.json", "is-number"]}


async def test_an_es_module_imports_from_its_set(actors_dir: Path, shared_deps_dir: Path,
                                                 make_runtime: RuntimeFactory) -> None:
    manifest = write_actor(actors_dir, "esm", "dependencies: {javascript: {is-number: 7.0.0}}\n",
                           language="javascript", source="""\
        import isNumber from 'is-number';
        export async function process(context) {
          await context.sendOutput('out', [isNumber('5'), isNumber('x')]);
        }
        """)
    (actors_dir / "esm.js").rename(actors_dir / "esm.mjs")
    manifest.write_text(manifest.read_text().replace("esm.js", "esm.mjs"))
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir))
    assert (await runtime.process("esm", {}))["outputs"]["out"] == [True, False]


async def test_load_over_the_wire_answers_32007(actors_dir: Path, shared_deps_dir: Path,
                                               make_runtime: RuntimeFactory,
                                               aiohttp_client: Any) -> None:
    bad = write_actor(actors_dir, "bad", "dependencies: {python: [no-such-package-i14==1.0]}\n")
    settings = settings_for(shared_deps_dir, actors_dir)
    runtime = await make_runtime(settings.replace(manifest_paths=()))
    client = await aiohttp_client(create_app(settings, runtime))
    async with client.ws_connect("/") as ws:
        await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "load",
                            "params": {"file_path": str(bad)}})
        answer = await ws.receive_json(timeout=120)
    assert answer["id"] == 1 and answer["error"]["code"] == -32007
    [problem] = answer["error"]["data"]["errors"]
    assert (problem["line"], problem["column"]) == (4, 1)
    assert "No matching distribution found for no-such-package-i14==1.0" in problem["message"]


def test_a_cache_hit_needs_no_network(actors_dir: Path, shared_deps_dir: Path) -> None:
    """The second build runs in a network namespace with no interface up: nothing to reach."""
    write_actor(actors_dir, "six_old", "dependencies: {python: [six==1.16.0]}\n")
    first = service("build", str(actors_dir), deps_dir=shared_deps_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    entry = next(shared_deps_dir.glob("python-*"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shared_deps_dir.iterdir()}
    offline = ("unshare", "--net")
    again = service("build", str(actors_dir), deps_dir=shared_deps_dir, prefix=offline)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("cached: python-")
    assert "installing" not in again.stderr and "Collecting" not in again.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shared_deps_dir.iterdir()} \
        == before
    assert entry.exists()
    # The control: the same namespace cannot install anything new.
    write_actor(actors_dir, "six_old", "dependencies: {python: [six==1.15.0]}\n")
    cut_off = service("build", str(actors_dir), deps_dir=shared_deps_dir, prefix=offline,
                      PIP_RETRIES="0")  # passed on to pip: fail at once
    assert cut_off.returncode == 1
    assert "FAILED python six==1.15.0 (actors six_old): pip failed" in cut_off.stdout


def test_a_corrupted_entry_is_detected_and_rebuilt(
        own_deps_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder = DepsBuilder(Settings(deps_dir=own_deps_dir))
    built = builder.ensure(SIX_16)
    assert not built.cached
    pristine = sources(built.entry)
    assert builder.ensure(SIX_16).cached
    damages = {
        "changed file lib/six.py": lambda e: (e / "lib" / "six.py").write_text("evil = 1\n"),
        "unexpected file lib/evil.pth": lambda e: (e / "lib" / "evil.pth").write_text("x\n"),
        # a mode only this user could have set: damage (a mode others could write through
        # is refused instead, in test_trust.py)
        "changed file lib/six.py ": lambda e: (e / "lib" / "six.py").chmod(0o600),
        f"{MARKER} is missing": lambda e: (e / MARKER).unlink(),
    }
    for reason, damage in damages.items():
        damage(built.entry)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="service.deps.build"):
            again = builder.ensure(SIX_16)
        assert not again.cached, reason
        assert f"corrupted ({reason.strip()})" in caplog.text
        assert sources(again.entry) == pristine
    assert list(own_deps_dir.glob(".build-*")) == list(own_deps_dir.glob(".trash-*")) == []


def test_an_incomplete_python_set_is_refused(own_deps_dir: Path) -> None:
    lonely = Dependencies("python", (Package("python-dateutil", "2.9.0.post0"),))
    with pytest.raises(DepsError) as caught:
        DepsBuilder(Settings(deps_dir=own_deps_dir)).ensure(lonely)
    assert str(caught.value) == (
        "the set is incomplete: python-dateutil 2.9.0.post0 needs six>=1.5, which the set "
        "does not include: add six==VERSION")
    assert list(own_deps_dir.iterdir()) == [own_deps_dir / ".locks"]  # nothing half-built


async def test_an_uninstallable_set_fails_load_and_the_rest_keeps_serving(
        actors_dir: Path, shared_deps_dir: Path, make_runtime: RuntimeFactory) -> None:
    write_actor(actors_dir / "good", "good", "dependencies: {python: [six==1.16.0]}\n")
    bad = write_actor(actors_dir / "bad", "bad", "# no such version\n"
                      "dependencies: {python: [six==99.0.0]}\n")
    runtime = await make_runtime(settings_for(shared_deps_dir, actors_dir / "good"))
    runtime.settings = runtime.settings.replace(allowed_roots=(actors_dir,))
    with pytest.raises(ManifestInvalid) as caught:
        await runtime.load(str(bad))
    error = caught.value.to_json()
    assert error["code"] == -32007
    [problem] = error["data"]["errors"]
    assert problem["file"] == load_manifest(bad, Settings()).manifest_display
    assert (problem["line"], problem["column"], problem["path"]) == (5, 1, "/dependencies")
    assert problem["message"].startswith("dependencies: cannot be installed: pip failed (exit 1)")
    assert "No matching distribution found for six==99.0.0" in problem["message"]
    assert error["message"] == f"Manifest invalid: {problem['message']}"
    assert [a.id for a in runtime.actors()] == ["good"]
    assert (await runtime.process("good", {}))["outputs"]["out"]["version"] == "1.16.0"


def test_service_build_exits_1_with_the_installer_message(actors_dir: Path,
                                                          own_deps_dir: Path) -> None:
    write_actor(actors_dir, "bad", "dependencies: {javascript: {is-number: 99.0.0}}\n",
                language="javascript", source="async function process(context) {}\n")
    done = service("build", str(actors_dir), deps_dir=own_deps_dir)
    assert done.returncode == 1
    assert done.stdout.startswith("FAILED javascript is-number@99.0.0 (actors bad): npm failed")
    assert "No matching version found for is-number@99.0.0" in done.stdout
    assert done.stdout.endswith("0 of 1 dependency sets ready in " + str(own_deps_dir) + "\n")


def test_service_build_refuses_an_unpinned_manifest(actors_dir: Path, own_deps_dir: Path) -> None:
    write_actor(actors_dir, "loose", "dependencies: {python: [six>=1.16]}\n")
    done = service("build", str(actors_dir), deps_dir=own_deps_dir)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        f"{actors_dir}/loose.yaml:4:25: dependencies.python[0]: 'six>=1.16' is not pinned to "
        "one version: write six==VERSION")
    assert not own_deps_dir.exists()  # nothing was installed


def test_a_cache_hit_writes_nothing(own_deps_dir: Path) -> None:
    """An intact entry is used without the lock, so a complete cache may be read-only."""
    builder = DepsBuilder(Settings(deps_dir=own_deps_dir))
    builder.ensure(SIX_16)
    shutil.rmtree(own_deps_dir / ".locks")
    assert builder.ensure(SIX_16).cached
    assert [p.name for p in own_deps_dir.iterdir()] == [builder.ensure(SIX_16).name]


def test_service_test_fails_an_actor_whose_set_cannot_be_installed(
        actors_dir: Path, own_deps_dir: Path) -> None:
    write_actor(actors_dir, "bad", "dependencies: {javascript: {is-number: 99.0.0}}\n",
                language="javascript", source="async function process(context) {}\n")
    done = service("test", "--backend", "process", str(actors_dir), deps_dir=own_deps_dir)
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL bad: dependencies cannot be installed: npm failed")
    assert done.stdout.endswith("0 passed, 1 failed\n")


def test_the_marker_records_what_was_built(shared_deps_dir: Path) -> None:
    built = DepsBuilder(Settings(deps_dir=shared_deps_dir)).ensure(SIX_16)
    marker = json.loads((built.entry / MARKER).read_text())
    assert marker["name"] == built.name and marker["language"] == "python"
    assert marker["packages"] == ["six==1.16.0"]
    assert marker["installer"].startswith("pip ")
    assert set(marker["interpreter"]) == {"implementation_name", "python_version",
                                          "platform_machine", "sys_platform", "libc"}
    assert marker["interpreter"]["libc"].startswith("glibc ")


INSTALLER_PROBE = """\
import os
def attempt(path):
    try:
        with open(path, "w") as file:
            file.write("x")
        return "ok"
    except OSError as exc:
        return exc.strerror
print("uid", os.getuid())
print("entry", attempt("/entry/probe"), "usr", attempt("/usr/probe"), "root", attempt("/probe"))
print("env", *sorted(os.environ))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop to uid 65534 needs root")
def test_the_installer_runs_as_nobody_and_writes_only_its_entry(own_deps_dir: Path) -> None:
    from service.deps.install import PASSED_ENV, _run

    own_deps_dir.mkdir(mode=0o755)
    build = own_deps_dir / "build"
    build.mkdir(mode=0o755)
    lines: list[str] = []
    _run(["/usr/bin/python3", "-I", "-c", INSTALLER_PROBE], build, [], lines.append,
         "probe")
    assert lines[0] == "uid 65534"
    assert lines[1] == "entry ok usr Read-only file system root Read-only file system"
    assert (build / "probe").stat().st_uid == 65534  # on the host too: not root mapped
    # nothing of the environment but the registry, proxy and CA variables
    assert set(lines[2].split()[1:]) <= {"HOME", "TMPDIR", "LANG", "PATH", "PWD",
                                         "SOURCE_DATE_EPOCH", *PASSED_ENV}
