"""The cpu image, built from this checkout by `scripts/image.py` (what `make image` runs) and run
the way the chart runs it: a non-root user, a read-only root filesystem with the chart's writable
mounts (/tmp and /dev/shm), its ports published on 127.0.0.1 only. Clients reach it over HTTP and
gRPC, `helm test`'s smoke command passes inside it, and SIGTERM stops it within the grace period.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from scripts.image import ROOT, engine, engine_env, image_mib
from serving.client.grpc import GrpcClient
from serving.client.http import Client
from tests.helpers.images import pixels
from tests.helpers.net import free_port, wait_until

pytestmark = pytest.mark.container

TAG = "localhost/sd-serving:test"
USER = "10001:10001"  # the chart's runAsUser/runAsGroup
# The chart's terminationGracePeriodSeconds is 120; a pod should be far quicker than that.
GRACE_S = 60
READY_TIMEOUT_S = 180
PNG = b"\x89PNG\r\n\x1a\n"
# The image's size and time to ready, printed at the end of the run (tests/container/conftest.py).
FIGURES: list[str] = []


@dataclass
class Container:
    name: str
    http_url: str
    grpc_target: str
    seconds_to_ready: float

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*engine(), *args], capture_output=True, text=True, check=check, env=engine_env()
        )

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.command("exec", self.name, *args, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    """The cpu target, built by the script `make image` runs (layers are cached between runs)."""
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image.py"), "--target", "cpu", "--tag", TAG],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return TAG


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    http_port, grpc_port = free_port(), free_port()
    name = f"sd-serving-test-{http_port}"
    started = time.monotonic()
    run = subprocess.run(
        [
            *engine(),
            "run",
            "--detach",
            "--name",
            name,
            "--user",
            USER,
            "--read-only",
            "--tmpfs",
            "/tmp:rw,mode=1777,size=4g",
            "--shm-size",
            "1g",
            "--publish",
            f"127.0.0.1:{http_port}:8000",
            "--publish",
            f"127.0.0.1:{grpc_port}:9000",
            image,
        ],
        capture_output=True,
        text=True,
        env=engine_env(),
    )
    assert run.returncode == 0, run.stderr
    url = f"http://127.0.0.1:{http_port}"
    box = Container(name, url, f"127.0.0.1:{grpc_port}", seconds_to_ready=0.0)
    try:
        ready = wait_until(lambda: _ready(url), READY_TIMEOUT_S, interval_s=0.5)
        logs = box.command("logs", name, check=False)
        assert ready, (
            f"not ready in {READY_TIMEOUT_S} s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        )
        box.seconds_to_ready = time.monotonic() - started
        FIGURES.append(
            f"image {image}: {image_mib(engine(), image):.0f} MiB; "
            f"/v2/health/ready 200 {box.seconds_to_ready:.1f} s after `run`"
        )
        yield box
    finally:
        box.command("rm", "--force", name, check=False)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_runs_as_the_charts_non_root_user_on_a_read_only_root(container: Container) -> None:
    assert container.exec("id", "-u").stdout.strip() == USER.split(":")[0]
    refused = container.exec("touch", "/opt/venv/written")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert container.exec("touch", "/tmp/scratch").returncode == 0  # the chart's emptyDir


def test_ports_are_published_on_loopback_only(container: Container) -> None:
    published = container.command("port", container.name).stdout.split()
    bindings = [entry for entry in published if ":" in entry]
    assert bindings and all(entry.startswith("127.0.0.1:") for entry in bindings), published


def test_png_over_http_shows_the_prompt(container: Container) -> None:
    """The image's default model is the demo model, and it draws what it is asked."""
    with Client(container.http_url, timeout_s=120) as client:
        generation = client.generate("a red circle on a white background", seed=7)
    image = generation.images[0]
    assert image.data.startswith(PNG)
    rgb = pixels(image.data).astype(int)
    assert rgb.shape == (64, 64, 3)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    white = (rgb > 200).all(axis=-1)
    assert red.mean() > 0.05 and white.mean() > 0.4, (red.mean(), white.mean())


def test_png_over_grpc(container: Container) -> None:
    with GrpcClient(container.grpc_target, timeout_s=120) as client:
        generation = client.generate("a red circle", steps=4, seed=7, output_format="png")
    image = generation.images[0]
    assert image.data.startswith(PNG)
    assert pixels(image.data).shape == (64, 64, 3)


def test_helm_test_smoke_command_passes_inside(container: Container) -> None:
    smoke = container.exec("python", "-m", "serving.smoke", "--url", "http://127.0.0.1:8000")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "OK: valid PNG" in smoke.stdout


def test_sigterm_stops_it_within_the_grace_period(container: Container) -> None:
    """Last: it stops the container. `stop` sends SIGTERM, then SIGKILL after GRACE_S."""
    started = time.monotonic()
    container.command("stop", "--time", str(GRACE_S), container.name)
    stopped_in = time.monotonic() - started
    state = container.command(
        "inspect", "--format", "{{.State.ExitCode}}", container.name
    ).stdout.strip()
    logs = container.command("logs", container.name, check=False)
    assert state == "0", f"exit code {state}:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
    assert stopped_in < GRACE_S
    assert "sd-serving shutting down" in logs.stdout + logs.stderr
