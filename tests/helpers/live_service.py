"""The real service, started the way `make serve` starts it: `sd-serving serve` in a process of
its own, with Ray and every deployment; stopped with SIGTERM, checked to exit cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.net import free_port, wait_until

# What the integration tier's service is configured with (tests/integration/conftest.py).
WEBHOOK_SECRET = "integration-webhook-secret"
DEFAULT_MODEL, SDXL_MODEL = "sd-embedded", "sdxl"
STARTUP_TIMEOUT_S = 240
SHUTDOWN_TIMEOUT_S = 90


@dataclass
class RunningService:
    url: str
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[str]
    output: list[str]
    ray_dir: str = ""
    crashed: bool = False

    def crash(self) -> None:
        """Kill the service and every Ray process of it at once (SIGKILL): no shutdown runs."""
        self.crashed = True
        for pid in [self.process.pid, *_processes_mentioning(self.ray_dir)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill_replicas(self, deployment: str) -> list[int]:
        """SIGKILL the replica processes of one deployment (`UNetDenoiser`): a crash of that
        stage alone, which Ray Serve answers by starting a replacement."""
        pids = [pid for pid in _descendants(self.process.pid) if deployment in _cmdline(pid)]
        assert pids, f"no replica process of {deployment} under the service"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def _cmdline(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _descendants(root: int) -> list[int]:
    """Every process below `root` (Ray's raylet, workers and replicas below the driver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent is the 2nd field after the parenthesised command name.
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, []):
            found.append(child)
            frontier.append(child)
    return found


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


@contextlib.contextmanager
def start_service(cache_dir: Path, settings: dict[str, str]) -> Iterator[RunningService]:
    """`sd-serving serve` on free ports with `settings` (SD_* variables); stopped with SIGTERM,
    failing unless it exits 0 and leaves no process behind."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # Ray puts unix sockets under its temp dir: keep the path short.
    ray_dir = tempfile.mkdtemp(prefix="sdt-", dir="/tmp")
    env = {
        **os.environ,
        "SD_HTTP_PORT": str(http_port),
        "SD_GRPC_PORT": str(grpc_port),
        "SD_METRICS_PORT": str(metrics_port),
        "SD_RAY_TEMP_DIR": ray_dir,
        "SD_CACHE_DIR": str(cache_dir),
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
    wait_until(lambda: ready.is_set() or process.poll() is not None, STARTUP_TIMEOUT_S, 0.2)
    running = RunningService(
        f"http://127.0.0.1:{http_port}", grpc_port, metrics_port, process, output, ray_dir
    )
    try:
        if not ready.is_set():
            raise RuntimeError("service did not start:\n" + "".join(output[-60:]))
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        wait_until(lambda: not _processes_mentioning(ray_dir), timeout_s=10, interval_s=0.2)
        leftovers = _processes_mentioning(ray_dir)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes left behind after shutdown: {leftovers}"
        if not running.crashed:
            assert code == 0, f"service exited with {code}:\n" + "".join(output[-40:])
            assert "sd-serving shutting down" in "".join(output)


@dataclass(frozen=True)
class UNetReading:
    steps: float  # ray_sd_denoising_steps_total
    busy: float  # active + queued requests


def unet_reading(service: RunningService) -> UNetReading:
    """The UNet's step count and its running plus waiting requests, from one scrape of the
    service's metrics."""
    text = httpx.get(service.metrics_url, timeout=10).text

    def total(prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    busy = total("ray_sd_unet_active_requests{") + total("ray_sd_unet_queue_depth{")
    return UNetReading(total("ray_sd_denoising_steps_total"), busy)
