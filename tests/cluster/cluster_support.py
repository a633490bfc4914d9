"""Helpers of the cluster tests: a real redis-server, service processes, a JSON-RPC client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
ACTORS = Path(__file__).parent / "actors"
READY_TIMEOUT_S = 60.0
# Fast failure detection, so tests that kill workers take seconds.
FAST_CLUSTER = {"heartbeat_s": 0.2, "worker_timeout_s": 1.5, "reconnect_max_s": 0.5}


def slow(test: Any) -> Any:
    """A long cluster run, kept out of `make test` (its time budget): ``CLUSTER_SLOW=1`` runs
    it too, and ``-m slow`` selects only these (CI's "long cluster runs" step)."""
    skip = pytest.mark.skipif(os.environ.get("CLUSTER_SLOW") != "1",
                              reason="slow cluster test: set CLUSTER_SLOW=1")
    return pytest.mark.slow(skip(test))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_config(path: Path, redis_url: str, *, role: str = "front",
                 manifest_paths: tuple[Path, ...] = (), allowed_roots: tuple[Path, ...] = (),
                 host: str = "127.0.0.1", auth: dict[str, Any] | None = None,
                 **cluster: Any) -> Path:
    """A settings file for one process of a cluster (process backend)."""
    lines = ["[default]", f"host = {toml_value(host)}", 'backend = "process"',
             f"manifest_paths = {toml_value([str(p) for p in manifest_paths])}",
             f"allowed_roots = {toml_value([str(p) for p in allowed_roots])}",
             f"schema_roots = {toml_value([str(REPO / 'schemas')])}",
             "shutdown_grace_s = 2", "", "[default.cluster]",
             f"redis_url = {toml_value(redis_url)}", f"role = {toml_value(role)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in {**FAST_CLUSTER, **cluster}.items()]
    if auth:
        lines += ["", "[default.auth]"] + [f"{k} = {toml_value(v)}" for k, v in auth.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class RedisServer:
    """A throwaway redis-server (no persistence) on a loopback port; can be stopped and
    started again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, bind: str = "127.0.0.1",
                 password: str | None = None, prefix: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.extra_args = extra_args  # e.g. TLS: --port 0 --tls-port PORT ...
        self.port = port or free_port()
        self.bind = bind
        self.password = password
        self.prefix = prefix  # e.g. ("ip", "netns", "exec", NAME)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}/0"

    async def start(self) -> None:
        redis = shutil.which("redis-server")
        assert redis is not None, "redis-server is not installed (scripts/setup.sh)"
        args = [*self.prefix, redis, "--port", str(self.port), "--bind", self.bind,
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.returncode is None, self.log_tail()
            if not self.prefix:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(self.bind, self.port)
                    writer.close()
                    return
            elif await self._ping():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"redis-server did not start: {self.log_tail()}")

    async def _ping(self) -> bool:
        cli = shutil.which("redis-cli") or "redis-cli"
        args = [*self.prefix, cli, "-h", self.bind, "-p", str(self.port)]
        if self.password:
            args += ["--no-auth-warning", "-a", self.password]
        proc = await asyncio.create_subprocess_exec(*args, "ping", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return b"PONG" in out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
        return ""


class Service:
    """One `python -m service ...` process (a front or a worker) with its log file."""

    def __init__(self, name: str, args: list[str], port: int, log: Path,
                 prefix: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
        self.name = name
        self.args = args
        self.port = port
        self.log = log
        self.prefix = prefix
        self.host = host
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix, sys.executable, "-m", "service", *self.args, "--port",
                str(self.port), cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True)

    async def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S,
                           any_status: bool = False) -> dict[str, Any]:
        """The /healthz body once it answers 200 (or anything, with ``any_status``)."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200 or any_status:
                            body: dict[str, Any] = await response.json()
                            return body
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy: {self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL the whole process group: the service and its sandboxes."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


class Client:
    """A JSON-RPC client on one WebSocket: concurrent requests, notifications kept per id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.notes: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            if "method" in message:
                self.notes[message["params"]["request_id"]].append(message)
            else:
                future = self._waiting.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    self.notes["_unexpected"].append(message)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))

    async def send(self, method: str, params: Any) -> Any:
        request_id = next(self._ids)
        self._waiting[request_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "method": method,
                                           "params": params, "id": request_id}))
        return request_id

    async def response(self, request_id: Any, timeout_s: float = 60) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(asyncio.shield(self._waiting[request_id]), timeout_s)
        finally:
            if self._waiting[request_id].done():
                del self._waiting[request_id]

    async def call(self, method: str, params: Any, timeout_s: float = 60) -> dict[str, Any]:
        """The response; the notifications that came before it are in ``notes[id]``."""
        request_id = await self.send(method, params)
        response = await self.response(request_id, timeout_s)
        response["notes"] = self.notes.pop(request_id, [])
        return response

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connected(url: str) -> Any:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, max_msg_size=0)
        client = Client(ws)
        try:
            yield client
        finally:
            await client.close()


async def wait_for(predicate: Any, timeout_s: float = 30, every_s: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s (last: {value!r})")
        await asyncio.sleep(every_s)


class Cluster:
    """Fronts and workers of one test on one Redis; every process is stopped afterwards."""

    def __init__(self, redis: RedisServer, tmp: Path) -> None:
        self.redis = redis
        self.tmp = tmp
        self.services: list[Service] = []
        self.redis_url: str | None = None  # instead of redis.url (e.g. TLS options)
        self.actors: tuple[Path, ...] = (ACTORS,)  # fewer actors: workers start faster

    def with_examples(self) -> None:
        """Workers serve the example manifests too."""
        self.actors = (REPO / "manifests", ACTORS)

    def _config(self, name: str, role: str, **cluster: Any) -> Path:
        url = cluster.pop("redis_url", None) or self.redis_url or self.redis.url
        return write_config(self.tmp / f"{name}.toml", url, role=role,
                            manifest_paths=self.actors,
                            allowed_roots=(*self.actors, self.tmp), **cluster)

    async def front(self, healthy: bool = True, **cluster: Any) -> Service:
        """A started front (``healthy``: wait until it reaches Redis, else until it listens)."""
        name = f"front{len(self.services)}"
        config = self._config(name, "front", **cluster)
        service = Service(name, ["--config", str(config)], free_port(), self.tmp / f"{name}.log")
        return await self._started(service, healthy)

    async def workers(self, count: int, **cluster: Any) -> list[Service]:
        """``count`` started workers (healthy: registered with Redis)."""
        made = []
        for _ in range(count):
            name = f"worker{len(self.services) + len(made)}"
            config = self._config(name, "worker", **cluster)
            made.append(Service(name, ["worker", "--config", str(config)], free_port(),
                                self.tmp / f"{name}.log"))
        return list(await asyncio.gather(*(self._started(s) for s in made)))

    async def _started(self, service: Service, healthy: bool = True) -> Service:
        self.services.append(service)
        await service.start()
        await service.wait_healthy(any_status=not healthy)
        return service

    async def aclose(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services))
        # what each process logged: pytest shows it with a failed test's report
        for service in self.services:
            print(f"--- {service.name}.log (its end) ---\n{service.log_tail()}")
