"""The CLI: `serve` as a real subprocess on a free port; lint/test/run/doctor through main()."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from redis_support import RedisProcess
from server_support import ACTORS, MANIFESTS, REPO

from service.cli import json_equal, main
from service.client import RpcCallError, connect
from service.heap import settle_heap
from service.settings import Settings, StateSettings

STARTUP_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(*args: str, **service_env: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env.update({f"SERVICE_{k.upper()}": v for k, v in service_env.items()})
    return subprocess.Popen([sys.executable, "-m", "service", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not become healthy")


Served = tuple[int, subprocess.Popen[str]]


def _serve(**service_env: str) -> Served:
    port = _free_port()
    proc = _spawn("--port", str(port), "--config", "config/settings.toml",
                  "--backend", "process", "--actors", str(ACTORS), **service_env)
    return port, proc


@pytest.fixture
def served() -> Iterator[Served]:
    port, proc = _serve()
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture
def served_short_grace() -> Iterator[Served]:
    port, proc = _serve(shutdown_grace_s="1")
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


async def test_serve_answers_then_stops_cleanly_on_sigterm(
        served: Served) -> None:
    port, proc = served
    await _wait_healthy(port, proc)
    async with connect(f"ws://127.0.0.1:{port}/") as client:
        ids = [a["id"] for a in await client.list()]
        assert {"doubler", "doubler_js", "waiter"} <= set(ids)
        result = await client.process("doubler", {"input": 21})
        assert result.outputs == {"output": 42}
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, stderr
    assert "serving JSON-RPC on ws://127.0.0.1:" in stderr
    assert "process actor=doubler" in stderr  # the per-call log line


async def test_sigterm_lets_a_running_call_finish(
        served: Served) -> None:
    port, proc = served
    await _wait_healthy(port, proc)
    async with connect(f"ws://127.0.0.1:{port}/") as client:
        call = client.process("waiter", {"seconds": 1})
        events = aiter(call)
        await anext(events)  # the "started" output: the call is running
        proc.send_signal(signal.SIGTERM)
        rest = [event async for event in events]
    assert call.result is not None and call.result.return_value == {"slept": 1}
    assert len(rest) == 1
    await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0


async def test_sigterm_cancels_calls_still_running_after_the_grace(
        served_short_grace: Served) -> None:
    port, proc = served_short_grace
    await _wait_healthy(port, proc)
    async with connect(f"ws://127.0.0.1:{port}/") as client:
        call = client.process("waiter", {"seconds": 30})
        events = aiter(call)
        await anext(events)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(RpcCallError) as info:  # an answer before the close, not just 1001
            await anext(events)
    assert (info.value.code, info.value.data) == (
        -32009, {"backend": "process", "reason": "shutting down"})
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0
    assert "outcome=shutting_down" in stderr


@pytest.fixture
def served_long_grace() -> Iterator[Served]:
    port, proc = _serve(shutdown_grace_s="120")
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


async def test_draining_says_503_refuses_new_calls_and_a_second_signal_stops_now(
        served_long_grace: Served) -> None:
    port, proc = served_long_grace
    await _wait_healthy(port, proc)
    async with connect(f"ws://127.0.0.1:{port}/") as client:
        call = client.process("waiter", {"seconds": 60})
        events = aiter(call)
        await anext(events)
        proc.send_signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as session:
            while True:  # the drain starts when the signal is handled
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 503:
                        break
                    assert response.status == 200
                    await asyncio.sleep(0.05)
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 503  # no new connection while draining
        with pytest.raises(RpcCallError) as refused:
            await client.process("doubler", {"input": 1})
        assert (refused.value.code, refused.value.data["reason"]) == (-32009, "shutting down")
        assert await client.list()  # other methods still answer
        proc.send_signal(signal.SIGTERM)  # the second signal ends the 120 s grace now
        with pytest.raises(RpcCallError) as stopped:
            await anext(events)
        assert stopped.value.code == -32009
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0
    assert "second signal: stopping running calls now" in stderr


def test_a_started_servers_heap_is_out_of_the_collectors_reach() -> None:
    """What the start made is frozen (serve and serve_worker call settle_heap once started):
    a full collection, which any burst of allocations sets off with the loop waiting, then
    scans only what serving made (0.6 MB frames of small lists: answered in ~18 ms, not ~90)."""
    started = [object() for _ in range(1000)]  # stands for modules, settings, schemas
    gc.collect()
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(started)
        assert len(gc.get_objects()) < 100  # all a full collection has left to scan
    finally:
        gc.unfreeze()


def test_refuses_a_public_address_without_a_token() -> None:
    proc = _spawn("--host", "0.0.0.0", "--port", str(_free_port()), "--backend", "process")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr == ("error: refusing to listen on 0.0.0.0 without auth.tokens; "
                      "set auth.tokens or auth.allow_anonymous = true\n")


ACTOR = ("id: hostile\nlanguage: python\nscript: hostile.py\n"
         "inports: {input: {schema: {type: number}}}\n")
HOSTILE_PY = "async def process(context):\n    return context.get_input('input')\n"


@pytest.mark.parametrize("name, text, where", [
    ("hostile.yaml", "id: t10\x00\n",
     ":1:8: invalid YAML: the character U+0000 is not allowed"),
    ("hostile.yaml", ACTOR + "limits: {memory_mb: 0x" + "f" * 5000 + "}\n",
     ":5:21: 0xffffffff…ffffff (5002 characters) is too large"),
    ("hostile.yaml", ACTOR + "limits: {memory_mb: " + "9" * 5000 + "}\n",
     ":5:21: 9999999999…999999 (5000 characters) is too large"),
    ("hostile.js", "const metadata = {component: 'j', timeout: 0x" + "f" * 400 + "};\n",
     ":1:44: 0xffffffff…ffffff (402 characters) is too large"),
])
def test_a_manifest_built_to_crash_the_loader_stops_start_up_with_one_line(
        tmp_path: Path, name: str, text: str, where: str) -> None:
    (tmp_path / "hostile.py").write_text(HOSTILE_PY)
    (tmp_path / name).write_text(text)
    proc = _spawn("--port", str(_free_port()), "--config", "config/settings.toml",
                  "--backend", "process", "--actors", str(tmp_path))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    problems = [line for line in stderr.splitlines() if " INFO " not in line]  # not the logs
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / name}{where}"), stderr


async def test_integral_float_pool_sizes_start_the_server(tmp_path: Path) -> None:
    """`min_warm: 1.0` once stopped start-up (range() of a float in the warm pool)."""
    (tmp_path / "hostile.py").write_text(HOSTILE_PY)
    (tmp_path / "hostile.yaml").write_text(
        ACTOR + "pool: {min_warm: 1.0, max_workers: 2.0, max_queue: 3.0}\n"
        "limits: {memory_mb: 128.0, pids: 64.0, output_bytes: 1048576.0}\n")
    port = _free_port()
    proc = _spawn("--port", str(port), "--config", "config/settings.toml",
                  "--backend", "process", "--actors", str(tmp_path))
    try:
        await _wait_healthy(port, proc)
        async with connect(f"ws://127.0.0.1:{port}/") as client:
            assert (await client.process("hostile", {"input": 7})).return_value == 7
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, stderr


def test_invalid_settings_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "settings.toml"
    bad.write_text('[default]\nport = "high"\n')
    proc = _spawn("--config", str(bad))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith("error: invalid settings: port: ")


# --- lint / test / run / doctor, in process ---


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    for key in [k for k in os.environ if k.startswith("SERVICE_")]:
        monkeypatch.delenv(key)


def test_lint_clean_and_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(MANIFESTS)]) == 0
    (tmp_path / "bad.yaml").write_text("id: bad\nlanguage: python\nscript: bad.py\ntimeout: 5\n")
    assert main(["lint", str(tmp_path / "bad.yaml")]) == 1
    assert "bad.yaml:" in capsys.readouterr().out
    assert main(["lint", "--format", "nope"]) == 2


def test_test_runs_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--backend", "process", str(MANIFESTS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PASS doubler: doubles" in lines
    assert "PASS doubler_js: doubles" in lines or any(
        line.startswith("PASS doubler_js:") for line in lines)
    passed = sum(line.startswith("PASS ") for line in lines)
    assert passed >= 4
    assert lines[-1] == f"{passed} passed, 0 failed"


def test_test_reports_a_wrong_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "doubler.py").write_text((MANIFESTS / "doubler" / "doubler.py").read_text())
    (tmp_path / "wrong.yaml").write_text(
        "id: wrong\nlanguage: python\nscript: doubler.py\n"
        "inports: {input: {schema: {type: number}}}\n"
        "outports: {output: {schema: {type: number}}}\n"
        "examples:\n"
        "  - {name: right, payload: {input: 2}, outputs: {output: 4}}\n"
        "  - {name: wrong, payload: {input: 2}, outputs: {output: 5}}\n")
    assert main(["test", "--backend", "process", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "PASS wrong: right",
        'FAIL wrong: wrong: expected outputs {"output": 5}, got {"output": 4}',
        "1 passed, 1 failed",
    ]


def test_run_prints_outputs_then_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--backend", "process", str(MANIFESTS / "ticker" / "ticker.yaml"),
                 "--payload", '{"count": 2}'])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [next(iter(line)) for line in lines] == ["output", "output", "result"]
    assert [line["output"]["data"] for line in lines[:2]] == [1, 2]
    assert lines[2]["result"]["outputs"] == {"tick": 2}


def test_run_with_config_and_state(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--backend", "process", str(MANIFESTS / "counter" / "counter.yaml"),
                 "--payload", '{"value": 5}', "--call-config", '{"factor": 3}',
                 "--state", '{"count": 4}', "--config", "config/settings.toml"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]
    assert result["outputs"] == {"result": 15, "calls": 5}


def test_run_config_is_the_settings_file_and_json_there_gets_a_hint(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(MANIFESTS / "counter" / "counter.yaml"), "--payload", "{}",
                 "--config", '{"factor": 3}'])
    assert code == 2
    assert capsys.readouterr().err == ("error: invalid settings: --config is the settings file; "
                                       "the call's config is --call-config\n")


def test_a_mistyped_command_is_an_invalid_choice(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lnit", "manifests"]) == 2
    assert "invalid choice: 'lnit'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"service {version('actor-sandbox-service')}\n"


def test_every_flag_and_argument_has_help() -> None:
    import argparse

    from service.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in commands.choices.items()
               for action in sub._actions
               if not action.help and action.help != argparse.SUPPRESS]
    assert missing == []
    assert sorted(commands.choices) == ["build", "doctor", "lint", "run", "serve", "test",
                                        "worker"]


def test_lint_an_empty_folder_fails_unless_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path)]) == 1
    assert capsys.readouterr().out == (f"{tmp_path}:0:0: no manifests (*.yaml, *.yml) in this "
                                       "folder; --allow-empty accepts that\n")
    assert main(["lint", "--allow-empty", str(tmp_path)]) == 0
    assert main(["lint", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().out.endswith("nowhere:0:0: no such file or folder\n")


def test_lint_finds_the_project_settings_from_a_subfolder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """schema_roots come from the project's settings wherever lint runs from."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.toml").write_text(
        '[default]\nschema_roots = ["shared"]\nmanifest_paths = ["actors"]\n')
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "num.json").write_text('{"type": "number"}')
    actor = tmp_path / "actors" / "a"
    actor.mkdir(parents=True)
    (actor / "a.py").write_text("async def process(context):\n    return None\n")
    (actor / "a.yaml").write_text(
        "id: a\nlanguage: python\nscript: a.py\n"
        "inports: {input: {schema: {$ref: ../../shared/num.json}}}\n")
    for cwd in (tmp_path, actor, tmp_path / "shared"):
        monkeypatch.chdir(cwd)
        assert main(["lint"]) == 0, capsys.readouterr().out
    monkeypatch.chdir(actor)
    assert main(["lint", "."]) == 0, capsys.readouterr().out


def test_an_explicit_settings_files_relative_paths_are_the_working_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """manifest.md: "Relative paths resolve against the current working directory": with
    --config ../conf/s.toml, manifest_paths ["m"] is ./m, not ../conf/m."""
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "s.toml"
    config.write_text('[default]\nmanifest_paths = ["m"]\n')
    for where, name in ((tmp_path / "work" / "m", "from-cwd"), (tmp_path / "conf" / "m", "BAD")):
        where.mkdir(parents=True)
        (where / "a.py").write_text("async def process(context):\n    return None\n")
        (where / "a.yaml").write_text(f"id: {name}\nlanguage: python\nscript: a.py\n")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["lint", "--config", str(config)]) == 0, capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "conf")  # from there, ./m is the invalid one
    assert main(["lint", "--config", str(config)]) == 1


def test_run_error_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--backend", "process", str(ACTORS / "failing.yaml"),
                 "--payload", '{"input": 1}'])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error -32004: Actor failed: ZeroDivisionError: division by zero\n")


def test_run_bad_payload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(MANIFESTS / "doubler" / "doubler.yaml"), "--payload", "{nope"]) == 2
    assert main(["run", str(MANIFESTS / "doubler" / "doubler.yaml"), "--payload", "[1]"]) == 2


def test_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "process: ok" in out
    assert any(line.startswith("microvm: ") for line in out)
    assert out[-1].startswith("working backends: ") and "process" in out[-1]
    assert "state store: ok (embedded)" in out


def test_doctor_reports_the_redis_store(redis_process: RedisProcess,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import _doctor_state  # the backends' part is test_doctor's

    settings = Settings(state=StateSettings(redis_url=redis_process.url))
    assert asyncio.run(_doctor_state(settings)) is True
    out = capsys.readouterr().out.splitlines()
    assert "state store: ok (redis)" in out
    assert f"  url: {redis_process.url}" in out
    redis_process.stop()
    assert asyncio.run(_doctor_state(settings)) is False
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("state store: unavailable: redis unix://") for line in out)


@pytest.mark.parametrize(("a", "b", "equal"), [
    (42, 42.0, True), ({"a": [1, 2]}, {"a": [1, 2]}, True), (True, 1, False),
    ([1, 2], [2, 1], False), ({"a": 1}, {"a": 1, "b": 2}, False), ("1", 1, False),
    (None, None, True), (0, False, False),
])
def test_json_equal(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal
