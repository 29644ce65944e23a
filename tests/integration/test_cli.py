"""`sd-serving generate` (HTTP with its progress bar, and gRPC), `sd-serving gateway` and the
`helm test` check against the real service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.images import pixels
from tests.helpers.live_service import SDXL_MODEL, RunningService
from tests.helpers.net import free_port, wait_until

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_writes_the_images_with_a_progress_bar(service: RunningService, tmp_path: Path) -> None:
    output = tmp_path / "apple.png"
    result = run(
        "serving.cli",
        "generate",
        "a red apple on a wooden table",
        "-o",
        str(output),
        "--steps",
        "4",
        "--seed",
        "7",
        "--num-images",
        "2",
        "--url",
        service.url,
    )
    assert result.returncode == 0, result.stderr
    first, second = tmp_path / "apple-1.png", tmp_path / "apple-2.png"
    assert pixels(first.read_bytes()).shape == (128, 128, 3)
    assert "seed 7" in result.stdout and "seed 8" in result.stdout
    assert first.read_bytes() != second.read_bytes()
    # The progress bar follows the job's step events: the model's own PNDM sampler runs
    # 4 + 1 UNet steps (as diffusers' pipeline does), for each of 2 images.
    assert "denoising" in result.stderr and "10/10" in result.stderr


def test_cli_over_grpc_to_the_second_model(service: RunningService, tmp_path: Path) -> None:
    output = tmp_path / "apple.webp"
    result = run(
        "serving.cli",
        "generate",
        "a red apple",
        "-o",
        str(output),
        "--steps",
        "4",
        "--seed",
        "7",
        "--grpc",
        "--grpc-target",
        service.grpc_target,
        "--model",
        SDXL_MODEL,
    )
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[8:12] == b"WEBP" and "seed 7" in result.stdout


def test_the_helm_test_check_passes_against_the_service(service: RunningService) -> None:
    result = run("serving.smoke", "--url", service.url, "--steps", "2", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "OK: valid PNG 128x128 RGB" in result.stdout


def test_the_gateway_command_forwards_to_the_service(service: RunningService) -> None:
    port = free_port()
    command = ["gateway", "--upstream", service.url, "--host", "127.0.0.1", "--port", str(port)]
    gateway = subprocess.Popen([sys.executable, "-m", "serving.cli", *command])
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(answers, timeout_s=60, interval_s=0.2), "the gateway did not start"
        body = {"prompt": "a bridge at night", "seed": 5, "steps": 4}
        headers = {"Accept": "image/png"}
        direct = httpx.post(service.url + "/v1/generate", json=body, headers=headers, timeout=120)
        via_gateway = httpx.post(url + "/v1/generate", json=body, headers=headers, timeout=120)
        assert via_gateway.status_code == 200 and via_gateway.content == direct.content
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
