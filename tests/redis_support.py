"""A real ``redis-server`` for tests (the Debian package), on a unix socket in a temp dir.

Used through the fixtures of tests/conftest.py: ``redis_server`` (a URL) and
``redis_factory`` (start more, stop, restart). No mocks: the tests talk to a real Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT_S = 10.0


@dataclass
class RedisProcess:
    """One redis-server listening on ``socket`` only (no TCP port: nothing to collide with)."""

    folder: Path
    process: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisProcess:
        assert REDIS_SERVER is not None, "redis-server is not installed (scripts/setup.sh)"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--dir", str(self.folder), "--save", "",
             "--appendonly", "no", "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.cli("PING") != "PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self._log_tail()}")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> str:
        """``redis-cli -s SOCKET ARGS...``'s output, stripped ("" when it cannot connect)."""
        assert REDIS_CLI is not None, "redis-cli is not installed (scripts/setup.sh)"
        run = subprocess.run([REDIS_CLI, "-s", str(self.socket), *args], capture_output=True,
                             text=True, timeout=10, check=False)
        return run.stdout.strip() if run.returncode == 0 else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def _log_tail(self) -> str:
        try:
            return (self.folder / "redis.log").read_text()[-2000:]
        except OSError:
            return "(no log)"
