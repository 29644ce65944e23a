"""The Python client (sync and async) and `sd-serving generate` against the real service."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from serving.client import AsyncClient, Client, ClientError
from serving.client_grpc import AsyncGrpcClient, GrpcClient
from serving.codecs import decode_image
from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration


def test_sync_and_async_clients_get_the_same_image(service: RunningService) -> None:
    with Client(service.url) as client:
        assert client.ready()
        sync = client.generate("a tin robot", seed=12, steps=4)

    async def run() -> bytes:
        async with AsyncClient(service.url) as client:
            return (await client.generate("a tin robot", seed=12, steps=4)).images[0].data

    assert asyncio.run(run()) == sync.images[0].data
    assert sync.images[0].seed == 12 and sync.images[0].media_type == "image/png"


def test_job_client_reports_every_step_and_gets_the_same_image(service: RunningService) -> None:
    seen: list[tuple[int, int]] = []
    with Client(service.url) as client:
        result = client.generate_with_progress(
            "a robot with progress",
            on_progress=lambda done, total: seen.append((done, total)),
            seed=13,
            steps=4,
        )
        direct = client.generate("a robot with progress", seed=13, steps=4)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.images[0].data == direct.images[0].data and result.images[0].seed == 13

    async def run() -> list[int]:
        steps: list[int] = []
        async with AsyncClient(service.url) as client:  # another seed: not in the result cache
            await client.generate_with_progress(
                "a robot with progress",
                on_progress=lambda done, _: steps.append(done),
                seed=14,
                steps=3,
            )
        return steps

    assert asyncio.run(run()) == [1, 2, 3]


def test_grpc_clients_get_the_same_image_and_named_errors(service: RunningService) -> None:
    with Client(service.url) as http:
        expected = http.generate("a tin robot", seed=12, steps=4).images[0].data
    with GrpcClient(service.grpc_target) as client:
        assert client.ready()
        result = client.generate("a tin robot", seed=12, steps=4)
        with pytest.raises(ClientError) as caught:
            client.generate("a tin robot", steps=0)
    assert result.images[0].data == expected and result.images[0].seed == 12
    assert result.images[0].media_type == "image/png"
    assert caught.value.status == "INVALID_ARGUMENT" and caught.value.field == "inputs[steps]"

    async def run() -> bytes:
        async with AsyncGrpcClient(service.grpc_target) as client:
            return (await client.generate("a tin robot", seed=12, steps=4)).images[0].data

    assert asyncio.run(run()) == expected


def test_client_errors_carry_the_field(service: RunningService) -> None:
    with Client(service.url) as client, pytest.raises(ClientError) as caught:
        client.generate("x", width=100)
    assert caught.value.status == 422 and caught.value.field == "width"


def test_cli_writes_the_images(service: RunningService, tmp_path: Path) -> None:
    output = tmp_path / "apple.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
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
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second = tmp_path / "apple-1.png", tmp_path / "apple-2.png"
    assert decode_image(first.read_bytes()).shape == (128, 128, 3)
    assert "seed 7" in result.stdout and "seed 8" in result.stdout
    assert first.read_bytes() != second.read_bytes()
    # The progress bar follows the job's step events: 4 steps x 2 images.
    assert "denoising" in result.stderr and "8/8" in result.stderr


def test_cli_over_grpc(service: RunningService, tmp_path: Path) -> None:
    output = tmp_path / "apple.webp"
    command = [sys.executable, "-m", "serving.cli", "generate", "a red apple", "-o", str(output)]
    result = subprocess.run(
        [*command, "--steps", "4", "--seed", "7", "--grpc", "--grpc-target", service.grpc_target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[8:12] == b"WEBP" and "seed 7" in result.stdout


def test_cli_reports_errors_and_unreachable_servers(service: RunningService) -> None:
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "generate",
            "x",
            "--steps",
            "0",
            "--url",
            service.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "steps" in bad.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "serving.cli", "generate", "x", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
