"""The Python client (sync and async) and `sd-serving generate` against the real service."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from serving.client import AsyncClient, Client, ClientError
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
