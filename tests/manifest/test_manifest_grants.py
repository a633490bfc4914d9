"""What a manifest cannot give itself (network, pool sizes, the server's capacity), and input
built to hurt the loader (alias bombs, deep nesting): each a clear problem, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.errors import ManifestError
from service.manifest.loader import load_manifest
from service.manifest.yamlnodes import MAX_EXPANDED_CHARS, parse_manifest_yaml
from service.settings import CapacitySettings, LimitsMax, PoolMax, Settings

PROCESS_PY = "async def process(context):\n    return None\n"
BASE = "id: actor\nlanguage: python\nscript: actor.py\n"


def write(folder: Path, manifest: str, script: str = PROCESS_PY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "actor.py").write_text(script)
    (folder / "actor.yaml").write_text(manifest)
    return folder / "actor.yaml"


def problems(path: Path, settings: Settings | None = None) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, settings or Settings())
    return [f"{p.line}:{p.message}" for p in caught.value.problems]


# --- network is the operator's to grant ---


def test_network_is_refused_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "limits: {network: true}\n")
    assert problems(path) == [
        "4:limits.network: true is not allowed on this server: the operator grants network "
        "(settings limits_max.network = true, or 'actor' in limits_max.network_actors)"]


@pytest.mark.parametrize("maxima", [LimitsMax(network=True),
                                    LimitsMax(network_actors=("other", "actor"))])
def test_network_granted_by_the_settings(tmp_path: Path, maxima: LimitsMax) -> None:
    path = write(tmp_path, BASE + "limits: {network: true}\n")
    assert load_manifest(path, Settings(limits_max=maxima)).limits.network is True


def test_an_allow_list_names_other_actors_only(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "limits: {network: true}\n")
    settings = Settings(limits_max=LimitsMax(network_actors=("doubler",)))
    assert len(problems(path, settings)) == 1


def test_lint_says_so_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, BASE + "limits: {network: true}\n")
    assert main(["lint", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "limits_max.network" in out.out and "Traceback" not in out.out + out.err


# --- pool sizes and the server's capacity ---


def test_pool_over_the_settings_maxima(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "pool: {min_warm: 9, max_workers: 65, max_queue: 1025}\n")
    assert problems(path) == [
        "4:pool.min_warm: 9 is over the maximum 8 (settings pool_max.min_warm)",
        "4:pool.max_workers: 65 is over the maximum 64 (settings pool_max.max_workers)",
        "4:pool.max_queue: 1025 is over the maximum 1024 (settings pool_max.max_queue)"]


def test_warm_sandboxes_must_fit_the_servers_memory(tmp_path: Path) -> None:
    """min_warm 20 x 2 GiB booted 41 GiB of limits with no call: refused at load."""
    settings = Settings(pool_max=PoolMax(min_warm=32),
                        capacity=CapacitySettings(max_sandboxes=64, memory_mb=23_000))
    path = write(tmp_path, BASE + "limits: {memory_mb: 2048}\n"
                 "pool: {min_warm: 20, max_workers: 20}\n")
    assert problems(path, settings) == [
        "5:pool.min_warm: 20 warm sandboxes of 2048 MiB are over the server's "
        "capacity.memory_mb 23000"]


def test_one_sandbox_over_the_servers_memory(tmp_path: Path) -> None:
    settings = Settings(capacity=CapacitySettings(memory_mb=1024))
    path = write(tmp_path, BASE + "limits: {memory_mb: 2048}\n")
    assert problems(path, settings) == [
        "4:limits.memory_mb: 2048 MiB is over the server's sandbox memory "
        "(capacity.memory_mb = 1024)"]


def test_warm_sandboxes_over_the_servers_count(tmp_path: Path) -> None:
    settings = Settings(capacity=CapacitySettings(max_sandboxes=2))
    path = write(tmp_path, BASE + "pool: {min_warm: 3}\n")
    assert problems(path, settings) == [
        "4:pool.min_warm: 3 is over the server's capacity.max_sandboxes 2"]


# --- input built to hurt the loader ---


def test_aliases_of_a_long_string_are_bounded() -> None:
    """A 548 KB manifest of aliases to an 8 KB scalar made every `list` answer 737 MB."""
    text = "description: &big " + "x" * 8192 + "\nmany:\n" + "  - *big\n" * 300
    with pytest.raises(ManifestError) as caught:
        parse_manifest_yaml(text, "f.yaml")
    assert caught.value.problems[0].message == (
        f"the manifest is too big: over {MAX_EXPANDED_CHARS} characters after YAML aliases "
        "are expanded")


def test_deep_yaml_is_a_problem_not_a_crash(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["lint", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "nested too deeply" in out.out and "Traceback" not in out.out + out.err


@pytest.mark.parametrize("script", [
    "x = " + "-" * 200_000 + "1\n" + PROCESS_PY,  # RecursionError in the parser
    "x = " + "(" * 5000 + ")" * 5000 + "\n" + PROCESS_PY,
    "x = " + "[" * 100_000 + "\n",
])
def test_a_script_built_to_break_the_parser(tmp_path: Path, script: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE, script)
    found = problems(path)
    assert len(found) == 1 and "invalid Python" in found[0], found
    assert main(["lint", str(path)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
