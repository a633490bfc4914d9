"""A real server process (``python -m service``) for the attacks that need one: its own
listening socket, its own file descriptors, and a peak RSS and a log measured from outside."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists are the same in TOML


def settings_toml(port: int, connections: dict[str, Any],
                  top: dict[str, Any] | None = None) -> str:
    lines = ["[default]", 'host = "127.0.0.1"', f"port = {port}", 'backend = "process"',
             f"manifest_paths = {_toml([str(REPO / 'manifests')])}",
             f"allowed_roots = {_toml([str(REPO / 'manifests')])}",
             f"schema_roots = {_toml([str(REPO / 'schemas')])}"]
    lines += [f"{key} = {_toml(value)}" for key, value in (top or {}).items()]
    lines += ["[default.connections]"]
    lines += [f"{key} = {_toml(value)}" for key, value in connections.items()]
    return "\n".join(lines) + "\n"


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def peak_rss_kb(self) -> int:
        """VmHWM: the most memory the server ever held, read from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def healthz(self, timeout_s: float = 10) -> tuple[int, float]:
        """(status, seconds) of one GET /healthz."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, time.monotonic() - started


@contextlib.contextmanager
def live_server(tmp: Path, connections: dict[str, Any], nofile: int | None = None,
                top: dict[str, Any] | None = None) -> Iterator[LiveServer]:
    """Serve the example actors on a free port; ``nofile`` caps its file descriptors;
    ``top``: settings besides the connections' (``shutdown_grace_s``, ...)."""
    port = free_port()
    config = tmp / "settings.toml"
    config.write_text(settings_toml(port, connections, top))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    log = tmp / "server.log"

    def limit_fds() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--config", str(config)], cwd=REPO, env=env,
            stdout=sink, stderr=sink, preexec_fn=limit_fds)
    server = LiveServer(process, port, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited: {server.log_text()}")
        with contextlib.suppress(OSError):
            if server.healthz(timeout_s=2)[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server did not start: {server.log_text()}")


def open_idle(port: int, count: int, head: bytes = b"GET / HTTP/1.1\r\n") -> list[socket.socket]:
    """``count`` connections that each send the start of a request head, then nothing."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(OSError):
            s.sendall(head)
        sockets.append(s)
    return sockets


def closed_by_server(s: socket.socket, timeout_s: float) -> bool:
    """Did the server close ``s`` (EOF or reset) within ``timeout_s``?"""
    s.settimeout(timeout_s)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
