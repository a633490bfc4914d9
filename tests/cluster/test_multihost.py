"""The multi-host test: Redis, a front, three workers and a client, each in its own network
namespace on a private bridge (10.213.0.0/24, inside namespaces made here only). One
worker's namespace is SIGKILLed mid-load: every call is answered exactly once, none lost,
no output forwarded twice, and the killed worker's calls run again elsewhere.

Each worker also has a PID namespace of its own (with its own /proc), so killing the
namespace's processes kills its sandboxes too, as losing the machine would.
``CLUSTER_NETNS_CALLS`` sets the number of calls (default 120).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import ACTORS, REPO, RedisServer, Service, slow, write_config

CALLS = int(os.environ.get("CLUSTER_NETNS_CALLS", "120"))
SUBNET = "10.213.0"
TOKEN = "netns-test-token"
PASSWORD = "netns-redis-password"
HOSTS = {"redis": 1, "front": 2, "client": 3, "w1": 11, "w2": 12, "w3": 13}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="needs root, iproute2 (ip netns) and unshare")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def ns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         timeout=30).stdout
    return [int(p) for p in out.split()]


def kill_namespace(name: str) -> None:
    """SIGKILL every process of a namespace (a worker's sandboxes die with its PID ns)."""
    for pid in ns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def network(tag: str) -> Iterator[dict[str, str]]:
    """A hub namespace with a bridge and one namespace per host, veth-linked to it."""
    names = {host: f"{tag}-{host}" for host in HOSTS}
    hub = f"{tag}-hub"
    made: list[str] = []
    try:
        ip("netns", "add", hub)
        made.append(hub)
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "link", "set", "br0", "up")
        for host, name in names.items():
            ip("netns", "add", name)
            made.append(name)
            ip("-n", hub, "link", "add", f"p-{host}", "type", "veth", "peer", "name", "eth0",
               "netns", name)
            ip("-n", hub, "link", "set", f"p-{host}", "master", "br0", "up")
            ip("-n", name, "addr", "add", f"{SUBNET}.{HOSTS[host]}/24", "dev", "eth0")
            ip("-n", name, "link", "set", "eth0", "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in reversed(made):
            kill_namespace(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def in_ns(name: str, own_pids: bool = False) -> tuple[str, ...]:
    prefix: tuple[str, ...] = ("ip", "netns", "exec", name)
    if own_pids:
        prefix += ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    return prefix


def counter(metrics: str, name: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if re.match(rf"{name}_total\{{", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@slow  # a load run across six network namespaces
@pytest.mark.timeout(300)
async def test_worker_host_killed_mid_load(tmp_path: Path) -> None:
    with network(f"i15t{os.getpid() % 100000}") as ns:
        redis = RedisServer(tmp_path, port=6379, bind=f"{SUBNET}.1", password=PASSWORD,
                            prefix=in_ns(ns["redis"]))
        await redis.start()
        auth = {"tokens": [TOKEN]}
        front_config = write_config(tmp_path / "front.toml", redis.url, role="front",
                                    host=f"{SUBNET}.2", auth=auth)
        front = Service("front", ["--config", str(front_config)], 5556, tmp_path / "front.log",
                        prefix=in_ns(ns["front"]), host=f"{SUBNET}.2")
        workers = []
        for host in ("w1", "w2", "w3"):
            config = write_config(tmp_path / f"{host}.toml", redis.url, role="worker",
                                  host=f"{SUBNET}.{HOSTS[host]}", auth=auth,
                                  manifest_paths=(ACTORS,), allowed_roots=(ACTORS,))
            workers.append(Service(host, ["worker", "--config", str(config)], 5557,
                                   tmp_path / f"{host}.log", prefix=in_ns(ns[host], True)))
        try:
            await asyncio.gather(front.start(), *(w.start() for w in workers))
            summary = await load_with_a_kill(ns, tmp_path)
        finally:
            for service in (front, *workers):
                await service.kill()
            await redis.stop()
        logs = "\n".join(s.log_tail() for s in (front, *workers))
        check(summary, logs)


async def load_with_a_kill(ns: dict[str, str], tmp_path: Path) -> dict[str, object]:
    marker = tmp_path / "mid-load"
    client = await asyncio.create_subprocess_exec(
        *in_ns(ns["client"]), sys.executable, str(Path(__file__).parent / "netns_load.py"),
        "--front", f"{SUBNET}.2:5556", "--token", TOKEN, "--workers", "3",
        "--calls", str(CALLS), "--marker", str(marker), "--mark-after", str(CALLS // 5),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert client.returncode is None, (await client.communicate())[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the load never got going"
        await asyncio.sleep(0.05)
    kill_namespace(ns["w1"])  # the machine is gone: worker, sandboxes, everything
    out, err = await asyncio.wait_for(client.communicate(), 180)
    assert client.returncode == 0, err.decode()[-3000:]
    summary: dict[str, object] = json.loads(out)
    return summary


def check(summary: dict[str, object], logs: str) -> None:
    assert summary["answered"] == CALLS, logs[-3000:]  # none lost
    assert summary["answers"] == CALLS  # exactly one answer each
    assert summary["unexpected"] == []  # no late answer, no output after an answer
    assert summary["errors"] == [], summary["errors"]
    assert summary["results"] == CALLS
    assert summary["bad_outputs"] == []  # each output once, in order
    metrics = str(summary["metrics"])
    assert counter(metrics, "service_cluster_retried") >= 1, "no call of w1 ran again"
    assert counter(metrics, "service_cluster_dispatched") == CALLS
