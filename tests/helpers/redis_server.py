"""A real Redis (Debian's redis-server, installed by `make tools`) on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
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


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """Its URL (with a password, as the chart's Redis has); no persistence: the service's
    restarts are what the tests exercise, not Redis's own."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `make tools` (Debian's redis-server)"
        )
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    command += ["no", "--requirepass", PASSWORD, "--dir", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    try:
        if not wait_until(lambda: _answers(url), timeout_s=20):
            raise RuntimeError(f"redis-server did not answer on port {port}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
