"""The real service, started once per test session the way `make serve` starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 240
SHUTDOWN_TIMEOUT_S = 90
WEBHOOK_SECRET = "integration-webhook-secret"


@dataclass
class RunningService:
    url: str
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[str]
    output: list[str]

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The service with the defaults `make serve` uses (plus a webhook secret and CORS)."""
    with start_service(tmp_path_factory, {}) as running:
        yield running


@contextlib.contextmanager
def start_service(
    tmp_path_factory: pytest.TempPathFactory, settings: dict[str, str]
) -> Iterator[RunningService]:
    """`sd-serving serve` on free ports with `settings` (SD_* variables) on top of the test
    defaults; stopped with SIGTERM, checking that it exits cleanly and leaves no process."""
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    # Ray puts unix sockets under its temp dir: keep the path short.
    ray_dir = tempfile.mkdtemp(prefix="sdt-", dir="/tmp")
    env = {
        **os.environ,
        "SD_HTTP_PORT": str(http_port),
        "SD_GRPC_PORT": str(grpc_port),
        "SD_METRICS_PORT": str(metrics_port),
        "SD_RAY_TEMP_DIR": ray_dir,
        "SD_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "model-cache"),
        "RAY_AUTH_MODE": "disabled",
        "SD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SD_CORS_ALLOW_ORIGINS": '["https://app.example.com"]',
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "sd-serving ready at" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.is_set() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    running = RunningService(
        f"http://127.0.0.1:{http_port}", grpc_port, metrics_port, process, output
    )
    try:
        if not ready.is_set():
            pytest.fail("service did not start:\n" + "".join(output[-60:]))
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        time.sleep(1.0)
        leftovers = _processes_mentioning(ray_dir)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert code == 0, f"service exited with {code}:\n" + "".join(output[-40:])
        assert not leftovers, f"processes left behind after shutdown: {leftovers}"
        assert "sd-serving shutting down" in "".join(output)
