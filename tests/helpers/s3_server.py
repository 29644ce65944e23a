"""An S3-compatible server on a free loopback port: moto in server mode (a real HTTP server the
S3 clients talk to, not a mocked client)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import httpx

from tests.helpers.net import free_port, wait_until

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """The environment an S3 client needs to reach it (endpoint and credentials)."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(endpoint, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        if not wait_until(answers, timeout_s=60, interval_s=0.2):
            raise RuntimeError(f"moto's S3 server did not answer on port {port}")
        yield {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
    finally:
        process.terminate()
        process.wait(timeout=10)
