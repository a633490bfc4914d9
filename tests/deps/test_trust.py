"""A cache entry is used only when no other user could have changed it, on every path.

``entry.json`` tells damage, not tampering: whoever rewrites the files rewrites it too. So
each tampering here also rewrites the marker (as an attacker would), so that the entry
still verifies, and must be refused for its owner or mode alone. The entries are written
and sealed here, not installed: no network.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from deps_support import RuntimeFactory, service, write_actor

from service.deps import cache
from service.deps.build import DepsBuilder, DepsError, build_main
from service.deps.spec import Dependencies, Package
from service.errors import ManifestInvalid
from service.settings import Settings

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to uid 1000 needs root")
SIX = Dependencies("python", (Package("six", "1.16.0"),))
OTHER_UID = 1000
Tamper = Callable[[Path, Path], str]  # (deps_dir, entry) -> the refusal expected


def reseal(entry: Path) -> None:
    """Rewrite the marker to match the files (what plant.py of the review did)."""
    marker = json.loads((entry / cache.MARKER).read_text())
    marker["files"] = cache.files_of(entry)
    (entry / cache.MARKER).write_text(json.dumps(marker))


def writable(path: str, mode: int) -> Tamper:
    def tamper(root: Path, entry: Path) -> str:
        (entry / path).chmod(mode)
        return f"is writable by other users (mode {mode:o})"
    return tamper


def given(path: str) -> Tamper:
    def tamper(root: Path, entry: Path) -> str:
        os.chown(entry / path, OTHER_UID, OTHER_UID, follow_symlinks=False)
        return f"belongs to uid {OTHER_UID}, not to this user (uid 0) or root"
    return tamper


def linked(target: str) -> Tamper:
    def tamper(root: Path, entry: Path) -> str:
        (entry / "lib" / "evil.py").symlink_to(target)
        return f"cache entry {entry}: lib/evil.py is a symlink to {target}, outside its entry"
    return tamper


def moved(root: Path, entry: Path) -> str:
    """The entry replaced by a symlink to a copy elsewhere (one the attacker can write)."""
    elsewhere = root.parent / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    return f"cache entry {entry} is a symlink to {elsewhere}, outside its entry"


def root_open(root: Path, entry: Path) -> str:
    root.chmod(0o777)
    return f"deps_dir {root} is writable by other users (mode 777)"


def root_given(root: Path, entry: Path) -> str:
    os.chown(root, OTHER_UID, OTHER_UID)
    return f"deps_dir {root} belongs to uid {OTHER_UID}"


def parent_open(root: Path, entry: Path) -> str:
    root.parent.chmod(0o777)  # not sticky: the deps_dir in it can be swapped
    return f"the folder above it, {root.parent}, is writable by other users (mode 777)"


TAMPERINGS: dict[str, Tamper] = {
    "deps_dir 0777": root_open,
    "deps_dir of uid 1000": root_given,
    "folder above deps_dir 0777": parent_open,
    "entry 0775": writable(".", 0o775),
    "entry of uid 1000": given("."),
    "folder of the entry 0777": writable("lib", 0o777),
    "file 0666": writable("lib/six.py", 0o666),
    "file 0664": writable("lib/six.py", 0o664),
    "file of uid 1000": given("lib/six.py"),
    "marker of uid 1000": given(cache.MARKER),
    "absolute symlink": linked("/etc/passwd"),
    "relative symlink out": linked("../../elsewhere/six.py"),
    "entry is a symlink": moved,
}


@pytest.fixture
def builder(own_deps_dir: Path) -> DepsBuilder:
    return DepsBuilder(Settings(deps_dir=own_deps_dir))


@pytest.fixture
def entry(builder: DepsBuilder) -> Path:
    """A sealed entry of SIX in the builder's cache, as a build would leave it."""
    root = builder.settings.deps_dir.resolve()
    name = cache.entry_name(SIX, builder.interpreter("python").abi)
    cache.prepare_root(root)
    build = cache.new_build_dir(root, name)
    (build / "lib" / ".bin").mkdir(parents=True)
    (build / "lib" / "six.py").write_text("__version__ = '1.16.0'\n")
    (build / "lib" / ".bin" / "six").symlink_to("../six.py")  # like npm's, inside: fine
    cache.seal(build, {"name": name, **SIX.to_json()})
    cache.install(build, root / name)
    assert builder.ensure(SIX).cached  # /tmp above it is 1777 but sticky: trusted
    return root / name


def tamper(how: str, builder: DepsBuilder, entry: Path) -> str:
    """Apply one tampering, the marker rewritten to match; the refusal it must get."""
    expected = TAMPERINGS[how](builder.settings.deps_dir.resolve(), entry)
    if entry.is_dir():
        reseal(entry)
    assert cache.verify(entry, entry.name) is None  # what the old code relied on alone
    return expected


@pytest.mark.parametrize("how", TAMPERINGS)
def test_ensure_refuses_an_entry_others_could_change(how: str, builder: DepsBuilder,
                                                     entry: Path) -> None:
    expected = tamper(how, builder, entry)
    before = cache.files_of(entry)
    with pytest.raises(DepsError, match=re.escape(expected)) as caught:
        builder.ensure(SIX)
    assert "refused, since whoever can change it can plant code" in str(caught.value)
    assert cache.files_of(entry) == before  # refused, not rebuilt over


def test_a_refused_entry_that_fails_verification_is_not_rebuilt(builder: DepsBuilder,
                                                                entry: Path) -> None:
    (entry / "lib" / "six.py").write_text("PLANTED = 1\n")
    os.chown(entry / "lib" / "six.py", OTHER_UID, OTHER_UID)  # marker left stale
    with pytest.raises(DepsError, match=re.escape("lib/six.py belongs to uid 1000")):
        builder.ensure(SIX)
    assert (entry / "lib" / "six.py").read_text() == "PLANTED = 1\n"


def test_a_sticky_folder_above_deps_dir_is_trusted(builder: DepsBuilder, entry: Path) -> None:
    builder.settings.deps_dir.parent.chmod(0o1777)  # like /tmp: others cannot rename ours
    assert builder.ensure(SIX).cached


def test_a_fresh_build_is_held_to_the_same_rules(own_deps_dir: Path) -> None:
    build = own_deps_dir / "build"
    (build / "lib").mkdir(parents=True)
    (build / "lib" / "evil.py").symlink_to("/etc/passwd")
    cache.seal(build, {"name": "python-x"})
    with pytest.raises(cache.CacheError, match=re.escape(
            "lib/evil.py is a symlink to /etc/passwd")):
        cache.check_entry(build)


def test_service_build_refuses_it(builder: DepsBuilder, entry: Path, actors_dir: Path) -> None:
    write_actor(actors_dir, "sixer", "dependencies: {python: [six==1.16.0]}\n")
    out = io.StringIO()
    assert build_main([actors_dir], builder.settings, out) == 0  # the control
    assert out.getvalue().startswith(f"cached: {entry.name} ")
    expected = tamper("file of uid 1000", builder, entry)
    out = io.StringIO()
    assert build_main([actors_dir], builder.settings, out) == 1
    assert out.getvalue().startswith(
        f"FAILED python six==1.16.0 (actors sixer): cache entry {entry}: lib/six.py {expected}")


async def test_the_server_refuses_it_at_start_and_load(
        builder: DepsBuilder, entry: Path, actors_dir: Path,
        make_runtime: RuntimeFactory) -> None:
    manifest = write_actor(actors_dir, "sixer", "dependencies: {python: [six==1.16.0]}\n")
    tamper("deps_dir 0777", builder, entry)
    settings = builder.settings.replace(manifest_paths=(actors_dir,), allowed_roots=(actors_dir,),
                                        backend="process")
    runtime = await make_runtime(settings)
    assert runtime.actors() == []
    assert "deps_dir" in runtime.unavailable["sixer"]
    assert "is writable by other users (mode 777)" in runtime.unavailable["sixer"]
    with pytest.raises(ManifestInvalid) as caught:
        await runtime.load(str(manifest))
    [problem] = caught.value.to_json()["data"]["errors"]
    assert f"deps_dir {builder.settings.deps_dir.resolve()} is writable" in problem["message"]


def test_service_run_refuses_it(builder: DepsBuilder, entry: Path, actors_dir: Path) -> None:
    manifest = write_actor(actors_dir, "sixer", "dependencies: {python: [six==1.16.0]}\n")
    expected = tamper("entry of uid 1000", builder, entry)
    done = service("run", "--backend", "process", "--payload", "{}", str(manifest),
                   deps_dir=builder.settings.deps_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert f"error -32007: Manifest invalid: dependencies: cannot be installed: cache entry " \
        f"{entry} {expected}" in done.stderr
