"""The hostile actor corpus (cases.yaml), run on every backend available here.

Each row is an attack with the exact outcome it must have. After it, a benign call on
the same actor must succeed, and nothing of its sandboxes may be left on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_support import (
    BACKENDS,
    CANARY_NAME,
    HERE,
    REPO,
    Listener,
    SandboxWatch,
    Substitute,
    host_state,
    host_tcp_mem_mb,
    hostile_settings,
    idle_use,
    inotify_fds,
    nobody_gets_inotify,
    rss_mb,
    running,
    substituter,
    watching,
    wire_bytes,
)

from service.errors import RpcError
from service.runtime import Runtime
from service.sandbox.base import Backend

CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "cases.yaml").read_text())
MARGIN_S = 15  # on top of the actor's timeout_s: a hung call fails the test, never the suite


def test_cases_are_well_formed() -> None:
    """Every row names an existing manifest and says exactly what must happen."""
    names = [c["case"] for c in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert (HERE / case["manifest"]).is_file(), case["case"]
        steps = case.get("steps") or [{"payload": case.get("payload"), "expect": case["expect"]}]
        steps += [{"expect": e} for e in case.get("expect_on", {}).values()]
        steps += [{"expect": case["benign_expect"]}] if "benign_expect" in case else []
        for step in steps:
            if set(step) == {"idle_s"}:
                continue
            assert set(step["expect"]) <= {"error", "returns", "any_of", "load_error"}, case
        assert set(case.get("expect_on", {})) <= set(BACKENDS)
        assert not ("expect_on" in case and "steps" in case), case["case"]
        assert set(case.get("checks_on", {})) <= set(BACKENDS)
        for checks in (case.get("checks", {}), *case.get("checks_on", {}).values()):
            assert set(checks) <= {"emitted", "cpu_ratio_below", "bystander",
                                   "loopback_untouched", "host_absent", "symlinks",
                                   "max_notifications", "idle_cpu_ms_below",
                                   "rss_growth_mb_below", "host_unchanged", "nobody_inotify",
                                   "wire_bytes_below", "idle_written_mb_below",
                                   "sandbox_tmp_empty", "sandbox_replaced",
                                   "host_tcp_mem_growth_mb_below",
                                   "no_sandbox_inotify"}, case["case"]
        assert set(case.get("known_issue", {})) <= set(BACKENDS)
        assert case.get("also_private", False) in (True, False)


async def test_the_watch_sees_what_a_sandbox_leaves_behind() -> None:
    """The leftover check can fail: an orphan left in a new pid namespace is reported."""
    watch = SandboxWatch()
    async with watching(watch):
        outer = await asyncio.create_subprocess_exec("unshare", "--pid", "--fork", "sleep", "30")
        while len(watch.procs) < 2:  # unshare, and sleep in its new namespace
            await asyncio.sleep(0.02)
        outer.kill()  # the sleep inside lives on, reparented: an escaped sandbox process
        await outer.wait()
    try:
        assert len(watch.namespaces) == 1
        left = watch.alive()
        assert len(left) == 1 and "sleep" in left[0], left
    finally:
        watch.kill_recorded()
        assert await watch.wait_gone() == []
        watch.release()


@dataclass
class Observed:
    """What one call did: its result or its error, and the notifications sent before the end."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def describe(self) -> str:
        sent = [str(p["data"])[:60] for m, p in self.notes if m == "output"][:2]
        logs = sum(1 for m, _ in self.notes if m == "log")
        before = f" after outputs {sent}" if sent else ""
        before += f" after {logs} logs" if logs else ""
        if self.error is not None:
            data = {k: v for k, v in (self.error.get("data") or {}).items() if k != "traceback"}
            return f"error {self.error['code']} {data}{before}"
        return f"returned {self.result and self.result['return']}{before}"


async def call(runtime: Runtime, actor_id: str, payload: dict[str, Any]) -> Observed:
    seen = Observed()

    async def emit(method: str, params: dict[str, Any]) -> None:
        seen.notes.append((method, params))

    timeout_s = runtime.get(actor_id).limits.timeout_s + MARGIN_S
    try:
        seen.result = await asyncio.wait_for(
            runtime.process(actor_id, payload, emit=emit), timeout_s)
    except RpcError as exc:
        seen.error = exc.to_json()
    return seen


def is_subset(expected: Any, actual: Any) -> bool:
    """Every key of ``expected`` (recursively, for objects) has that value in ``actual``."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and is_subset(v, actual[k]) for k, v in expected.items())
    return bool(expected == actual and type(expected) is type(actual))


def matches(expect: dict[str, Any], seen: Observed) -> bool:
    if "any_of" in expect:
        return any(matches(e, seen) for e in expect["any_of"])
    if "error" in expect:
        wanted = expect["error"]
        return (seen.error is not None and seen.error["code"] == wanted["code"]
                and is_subset(wanted.get("data", {}), seen.error.get("data")))
    return seen.result is not None and is_subset(expect["returns"], seen.result["return"])


def host_variables(outside: Path, actor_dir: Path, listener: Listener) -> dict[str, Any]:
    return {
        "HOST_SOURCE": str((REPO / "service" / "runtime.py").resolve()),
        "REPO": str(REPO.resolve()),
        "HOST_PID": os.getpid(),
        "CANARY_NAME": CANARY_NAME,
        "LOOPBACK_PORT": listener.port,
        "ABSTRACT_NAME": listener.abstract,
        "SECRET_FILE": str(outside / "secret.txt"),
        "OUTSIDE_SCRIPT": str(outside / "evil.py"),
        "OUTSIDE_DIR": str(outside),
        "PROBE_NAME": f"hostile-probe-{uuid.uuid4().hex[:8]}",
        "ACTOR_DIR": str(actor_dir),
    }


@dataclass
class Case:
    """One row of the table, with its ``$`` variables filled in."""

    row: dict[str, Any]
    fill: Substitute
    manifest: Path
    backend_name: str

    @property
    def checks(self) -> dict[str, Any]:
        checks = self.row.get("checks_on", {}).get(self.backend_name, self.row.get("checks", {}))
        return dict(self.fill(checks))

    @property
    def steps(self) -> list[dict[str, Any]]:
        expect = self.row.get("expect_on", {}).get(self.backend_name, self.row.get("expect"))
        steps = self.row.get("steps") or [{"payload": self.row.get("payload"), "expect": expect}]
        return [self.fill(step) for step in steps]


def plant_symlinks(case: Case) -> list[Path]:
    links = []
    for name, target in case.checks.get("symlinks", {}).items():
        link = case.manifest.parent / name
        link.symlink_to(target)
        links.append(link)
    return links


async def refused_by_load(case: Case, backend: Backend, corpus: Path) -> None:
    """The manifest must be refused by `load`, for its script (a symlink out), nothing else."""
    runtime = Runtime(hostile_settings(corpus), backend)
    await runtime.start([])
    try:
        with pytest.raises(RpcError) as caught:
            await runtime.load(str(case.manifest))
    finally:
        await runtime.aclose()
    error = caught.value.to_json()
    assert error["code"] == case.steps[0]["expect"]["load_error"], error
    assert [e["path"] for e in error["data"]["errors"]] == ["/script"], error


@dataclass
class Measured:
    """What the host saw while the row's steps ran (outside every sandbox)."""

    idle_cpu_ms: float = 0.0  # the most CPU sandboxes used in one idle window
    idle_written_mb: float = 0.0  # the most sandboxes wrote (to the server) in one window
    rss_growth_mb: float = 0.0  # the server's resident memory, after the steps less before
    # the host's TCP buffer memory after the steps less before (sockets still held)
    tcp_mem_growth_mb: float = 0.0
    sandbox_inotify_fds: int = 0  # inotify instances the sandboxes' processes hold after
    nobody_inotify: bool = True
    # entries seen from the host in a live sandbox's /tmp after a call; None: no sandbox /tmp
    # was visible (gVisor's is inside the Sentry)
    sandbox_tmp: list[str] | None = None
    # after each call (with sandbox_replaced): the sandboxes' pid namespaces seen so far
    # (the watch scans every 30 ms), and those still alive
    served: list[tuple[set[str], set[str]]] = field(default_factory=list)


async def run_steps(case: Case, runtime: Runtime,
                    watch: SandboxWatch) -> tuple[list[Observed], list[str], Measured]:
    """Run the row's calls, then a benign one; what each got, where it was not as expected,
    and what the host measured.

    Whatever the row expects, a failed sandbox must be gone at once, and the next benign
    call on the same actor must succeed. A step ``{idle_s: N}`` waits N seconds with no
    call running, measuring the CPU the sandboxes' cgroups use meanwhile.
    """
    actor_id = runtime.actors()[0].id
    observed, problems, measured = [], [], Measured()
    rss_before, tcp_before = rss_mb(), host_tcp_mem_mb()
    for step in case.steps:
        if "idle_s" in step:
            used = await idle_use(watch, step["idle_s"])
            print(f"idle {case.row['case']}: sandboxes used {used.cpu_ms:.0f} ms of CPU and "
                  f"wrote {used.written_mb:.1f} MiB in {step['idle_s']} s")
            measured.idle_cpu_ms = max(measured.idle_cpu_ms, used.cpu_ms)
            measured.idle_written_mb = max(measured.idle_written_mb, used.written_mb)
            continue
        seen = await call(runtime, actor_id, step["payload"])
        observed.append(seen)
        print(f"outcome {case.row['case']}: {seen.describe()}")  # shown by pytest -rP
        if not matches(step["expect"], seen):
            problems.append(f"expected {step['expect']}, got {seen.describe()}")
        if seen.error is not None:
            assert await watch.wait_gone() == [], "the failed sandbox is still running"
        if case.checks.get("sandbox_replaced"):
            watch.scan()
            measured.served.append((set(watch.namespaces), watch.live_namespaces()))
        if case.checks.get("sandbox_tmp_empty"):
            watch.scan()
            left = sandbox_tmp_entries(watch)
            if left is not None:
                measured.sandbox_tmp = (measured.sandbox_tmp or []) + left
    measured.rss_growth_mb = rss_mb() - rss_before
    measured.tcp_mem_growth_mb = host_tcp_mem_mb() - tcp_before
    if case.checks.get("no_sandbox_inotify"):
        watch.scan()
        measured.sandbox_inotify_fds = inotify_fds(watch.procs)
    if case.checks.get("nobody_inotify"):
        measured.nobody_inotify = await asyncio.to_thread(nobody_gets_inotify)
    benign = await call(runtime, actor_id, {"mode": "benign"})
    if "benign_expect" in case.row:  # the attack is the script's load: every call's
        if not matches(case.fill(case.row["benign_expect"]), benign):
            problems.append(f"the benign call after: expected {case.row['benign_expect']}, "
                            f"got {benign.describe()}")
        return observed, problems, measured
    assert benign.result is not None, f"the next benign call failed: {benign.error}"
    assert benign.result["return"] == {"ok": True}
    return observed, problems, measured


def sandbox_tmp_entries(watch: SandboxWatch) -> list[str] | None:
    """What the live sandboxes' /tmp holds, read from the host through /proc/PID/root (a
    call's answer comes after the harness's wipe); None when no sandbox /tmp is visible."""
    host_tmp = os.stat("/tmp")
    seen: dict[tuple[int, int], list[str]] = {}
    for pid in watch.procs:
        tmp = f"/proc/{pid}/root/tmp"
        with contextlib.suppress(OSError):
            info = os.stat(tmp)
            if (info.st_dev, info.st_ino) != (host_tmp.st_dev, host_tmp.st_ino):
                names = [f"{pid}:{name}" for name in os.listdir(tmp)]
                seen.setdefault((info.st_dev, info.st_ino), names)
    return [entry for entries in seen.values() for entry in entries] if seen else None


def expected_effects(case: Case, observed: list[Observed], measured: Measured) -> list[str]:
    """Where the notifications the calls sent, or what the host measured, were not as the
    row's checks say."""
    checks, problems = case.checks, []
    notes = [note for seen in observed for note in seen.notes]
    outputs = [params for method, params in notes if method == "output"]
    for port in checks.get("emitted", []):
        if port not in [p["port"] for p in outputs]:
            problems.append(f"no output on {port} before the end")
    if "cpu_ratio_below" in checks and outputs:
        ratio = outputs[0]["data"]["cpu_ratio"]
        if ratio >= checks["cpu_ratio_below"]:
            problems.append(f"the cpus quota was not applied: CPU ratio {ratio}")
    if len(notes) > checks.get("max_notifications", len(notes)):
        problems.append(f"{len(notes)} notifications reached the caller")
    if (sent := wire_bytes(notes)) > checks.get("wire_bytes_below", sent + 1):
        problems.append(f"{sent} bytes of notifications on the wire")
    return problems + measured_problems(case, measured)


def measured_problems(case: Case, measured: Measured) -> list[str]:
    """Where what the host measured while the steps ran was not as the row's checks say."""
    checks, problems = case.checks, []
    if measured.idle_cpu_ms >= checks.get("idle_cpu_ms_below", float("inf")):
        problems.append(f"sandboxes used {measured.idle_cpu_ms:.0f} ms of CPU between calls")
    if measured.idle_written_mb >= checks.get("idle_written_mb_below", float("inf")):
        problems.append(f"sandboxes wrote {measured.idle_written_mb:.0f} MiB between calls")
    if measured.rss_growth_mb >= checks.get("rss_growth_mb_below", float("inf")):
        problems.append(f"the server grew by {measured.rss_growth_mb:.0f} MiB")
    if not measured.nobody_inotify:
        problems.append("host uid 65534 can no longer create an inotify instance")
    if measured.tcp_mem_growth_mb >= checks.get("host_tcp_mem_growth_mb_below", float("inf")):
        problems.append(f"the host's TCP buffers grew by {measured.tcp_mem_growth_mb:.0f} MiB")
    if measured.sandbox_inotify_fds:
        problems.append(f"the sandboxes hold {measured.sandbox_inotify_fds} inotify instances")
    if checks.get("sandbox_tmp_empty"):
        problems += sandbox_tmp_problems(case, measured)
    if checks.get("sandbox_replaced"):
        problems += replaced_problems(measured.served)
    return problems


def replaced_problems(served: list[tuple[set[str], set[str]]]) -> list[str]:
    """The row's first call ran code that goes on after it: the sandbox that served it must
    be gone by the last call (seen from the host: the sandboxes' pid namespaces)."""
    if len(served) < 2 or not served[0][0]:
        return ["no sandbox was seen from the host by the end of the first call"]
    if served[0][0] & served[-1][1]:
        return ["the sandbox of the first call (its pid namespace, seen from the host) still "
                "ran at the last call: the worker was reused"]
    return []


def sandbox_tmp_problems(case: Case, measured: Measured) -> list[str]:
    if measured.sandbox_tmp:
        return [f"a sandbox's /tmp held {measured.sandbox_tmp} after a call"]
    if measured.sandbox_tmp is None and case.backend_name == "process":
        return ["no sandbox /tmp was visible from the host"]
    return []


def assert_host_untouched(case: Case, listener: Listener,
                          bystander: subprocess.Popen[bytes]) -> None:
    checks = case.checks
    if checks.get("loopback_untouched"):
        assert listener.connections == 0, "the sandbox reached a listener on the host"
    if checks.get("bystander"):
        assert bystander.poll() is None, "a host process was killed from the sandbox"
    present = [p for p in checks.get("host_absent", []) if os.path.lexists(p)]
    for path in present:  # clean up what a broken sandbox wrote on the host, then fail
        os.unlink(path)
    assert present == [], f"the sandbox wrote on the host: {present}"


def settle(row: dict[str, Any], backend_name: str, problems: list[str]) -> None:
    """Pass, fail, or xfail for a known issue (and fail once that issue is gone)."""
    issue = row.get("known_issue", {}).get(backend_name)
    if issue is None:
        assert problems == [], f"{row['case']}: " + "; ".join(problems)
    elif problems:
        pytest.xfail(f"known issue: {issue} ({'; '.join(problems)})")
    else:
        pytest.fail(f"{row['case']} no longer shows its known issue; remove it from "
                    f"cases.yaml: {issue}")


# Every row on the world-readable corpus; the privilege-sensitive ones on the private one too.
RUNS = [(row, "corpus") for row in CASES] + [
    (row, "private_corpus") for row in CASES if row.get("also_private")]


@pytest.mark.parametrize(("row", "corpus_kind"), RUNS,
                         ids=[row["case"] + ("-private" if kind != "corpus" else "")
                              for row, kind in RUNS])
async def test_hostile_case(row: dict[str, Any], corpus_kind: str, backend_name: str,
                            backend: Backend, outside: Path, canary: str, listener: Listener,
                            bystander: subprocess.Popen[bytes],
                            request: pytest.FixtureRequest) -> None:
    corpus: Path = request.getfixturevalue(corpus_kind)
    manifest = corpus / row["manifest"]
    fill = substituter(host_variables(outside, manifest.parent, listener))
    case = Case(row, fill, manifest, backend_name)
    links = plant_symlinks(case)
    try:
        if "load_error" in row.get("expect", {}):
            await refused_by_load(case, backend, corpus)
            return
        watch = SandboxWatch(ignore={bystander.pid})
        watched_paths = case.checks.get("host_unchanged", [])
        before = host_state(watched_paths)
        async with running(hostile_settings(corpus), backend, [manifest], watch) as runtime:
            observed, problems, measured = await run_steps(case, runtime, watch)
            # while the worker is still alive: what it holds (an AIO context, a pty) is freed
            # once it is gone
            assert host_state(watched_paths) == before, "an idle sandbox holds host state"
        assert_host_untouched(case, listener, bystander)
        assert host_state(watched_paths) == before, "the sandbox changed host files"
    finally:
        for link in links:
            link.unlink()
    settle(row, backend_name, problems + expected_effects(case, observed, measured))
