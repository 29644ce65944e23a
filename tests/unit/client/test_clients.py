"""The Python clients (HTTP and gRPC, sync and async) against the real ingress in this process:
every answer here was rendered (`cached` is false), so equal bytes mean equal rendering."""

from __future__ import annotations

import asyncio

import pytest

from serving.client import AsyncClient, AsyncGrpcClient, Client, ClientError, GrpcClient
from tests.helpers.local_service import LocalService


def test_sync_and_async_clients_get_the_same_image(uncached: LocalService) -> None:
    with Client(uncached.url) as client:
        assert client.ready()
        sync = client.generate("a tin robot", seed=12, steps=4)

    async def run() -> tuple[bytes, bool]:
        async with AsyncClient(uncached.url) as client:
            assert await client.ready()
            result = await client.generate("a tin robot", seed=12, steps=4)
            return result.images[0].data, result.cached

    data, cached = asyncio.run(run())
    assert sync.cached is False and cached is False
    assert data == sync.images[0].data
    assert sync.images[0].seed == 12 and sync.images[0].media_type == "image/png"
    assert sync.images[0].url.startswith("/v1/images/") and sync.parameters["steps"] == 4


def test_job_client_reports_every_step_and_gets_the_same_image(uncached: LocalService) -> None:
    seen: list[tuple[int, int]] = []
    with Client(uncached.url) as client:
        result = client.generate_with_progress(
            "a robot with progress",
            on_progress=lambda done, total: seen.append((done, total)),
            seed=13,
            steps=4,
        )
        direct = client.generate("a robot with progress", seed=13, steps=4)
    # The embedded model ships PNDM, which runs one warm-up iteration more than its steps.
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert result.cached is False and direct.cached is False
    assert result.images[0].data == direct.images[0].data and result.images[0].seed == 13

    async def run() -> list[int]:
        steps: list[int] = []
        async with AsyncClient(uncached.url) as client:
            await client.generate_with_progress(
                "a robot with progress",
                on_progress=lambda done, _: steps.append(done),
                seed=14,
                steps=3,
                scheduler="ddim",
            )
        return steps

    assert asyncio.run(run()) == [1, 2, 3]


def test_grpc_clients_get_the_same_image_and_named_errors(uncached: LocalService) -> None:
    with Client(uncached.url) as http:
        expected = http.generate("a tin robot", seed=12, steps=4, output_format="webp")
    with GrpcClient(uncached.grpc_target) as client:
        assert client.ready()
        result = client.generate("a tin robot", seed=12, steps=4, output_format="webp")
        with pytest.raises(ClientError) as caught:
            client.generate("a tin robot", steps=0)
    assert result.cached is False
    assert result.images[0].data == expected.images[0].data and result.images[0].seed == 12
    assert result.images[0].media_type == "image/webp"
    assert caught.value.status == "INVALID_ARGUMENT" and caught.value.field == "inputs[steps]"

    async def run() -> bytes:
        async with AsyncGrpcClient(uncached.grpc_target) as client:
            answer = await client.generate("a tin robot", seed=12, steps=4, output_format="webp")
            return answer.images[0].data

    assert asyncio.run(run()) == expected.images[0].data


def test_several_images_over_grpc(uncached: LocalService) -> None:
    with GrpcClient(uncached.grpc_target) as client:
        result = client.generate("two birds", seed=40, steps=3, num_images=2, guidance_scale=1.0)
    assert [image.seed for image in result.images] == [40, 41]
    assert result.images[0].data != result.images[1].data


def test_client_errors_carry_the_field(local: LocalService) -> None:
    with Client(local.url) as client, pytest.raises(ClientError) as caught:
        client.generate("x", width=100)
    assert caught.value.status == 422 and caught.value.field == "width"
    assert caught.value.code == "invalid_argument" and "multiple of 8" in caught.value.message
    with GrpcClient(local.grpc_target) as grpc_client, pytest.raises(TypeError, match="colour"):
        grpc_client.generate("x", colour="red")
