"""A real Redis (Debian's redis-server, installed by `make tools`) on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.helpers.net import free_port, wait_until

PASSWORD = "test-password"


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


class RedisProcess:
    """redis-server on one port and folder; `crash` and `start` again keep both, so an
    append-only Redis comes back with its data, as a restarted pod's does."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make tools` (Debian's redis-server)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        appendonly = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
        self._command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._command += appendonly or ["--appendonly", "no"]
        self._command += ["--requirepass", PASSWORD, "--dir", str(directory)]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        if not wait_until(lambda: _answers(self.url), timeout_s=20):
            raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def crash(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


@contextlib.contextmanager
def redis_process(directory: Path, *, persistent: bool = False) -> Iterator[RedisProcess]:
    server = RedisProcess(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """Its URL (with a password, as the chart's Redis has); no persistence: the service's
    restarts are what most tests exercise, not Redis's own (redis_process for that)."""
    with redis_process(directory) as server:
        yield server.url
