"""API keys, rate limits and a full UNet queue, on HTTP and gRPC alike, against a service started
with keys, a small token bucket and room for exactly one request in the UNet."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import httpx
import pytest

from serving.client_grpc import infer_request
from serving.rpc.protos import pb, pb_grpc
from tests.integration.conftest import RunningService, start_service

pytestmark = pytest.mark.integration

KEYS = ("key-alpha", "key-beta", "key-gamma", "key-delta")
BURST = 5


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    keys = tmp_path_factory.mktemp("secrets") / "api-keys"
    keys.write_text("\n".join(KEYS) + "\n")
    settings = {
        "SD_API_KEYS_FILE": str(keys),
        "SD_RATE_LIMIT_PER_MINUTE": "2",
        "SD_RATE_LIMIT_BURST": str(BURST),
        "SD_UNET_MAX_BATCH_SIZE": "1",
        "SD_UNET_MAX_QUEUE": "0",
    }
    with start_service(tmp_path_factory, settings) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stub(service: RunningService) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.grpc_target))


def grpc_key(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_api_keys_guard_http_and_grpc_but_not_health(guarded: RunningService) -> None:
    with httpx.Client(base_url=guarded.url, timeout=120) as client:
        refused = client.post("/v1/generate", json={"prompt": "x", "steps": 2})
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
        assert "key-" not in refused.text
        accepted = client.post(
            "/v1/generate", json={"prompt": "x", "steps": 2}, headers=bearer("key-alpha")
        )
        assert accepted.status_code == 200, accepted.text
        assert client.get("/v2/health/ready").status_code == 200

    with pytest.raises(grpc.RpcError) as raised:
        stub(guarded).ModelInfer(infer_request("sd-embedded", "x", {"steps": 2}), timeout=60)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = stub(guarded).ModelInfer(
        infer_request("sd-embedded", "x", {"steps": 2}), timeout=120, metadata=grpc_key("key-alpha")
    )
    assert answer.outputs[0].name == "image_bytes"
    assert stub(guarded).ServerLive(pb.ServerLiveRequest()).live  # probes need no key


def test_one_token_bucket_per_key_across_protocols(guarded: RunningService) -> None:
    for _ in range(BURST):
        stub(guarded).ServerMetadata(
            pb.ServerMetadataRequest(), timeout=30, metadata=grpc_key("key-beta")
        )
    with pytest.raises(grpc.RpcError) as raised:
        stub(guarded).ServerMetadata(
            pb.ServerMetadataRequest(), timeout=30, metadata=grpc_key("key-beta")
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(raised.value.trailing_metadata() or ())
    assert int(trailing["retry-after"]) >= 1

    limited = httpx.get(f"{guarded.url}/v2/models/sd-embedded", headers=bearer("key-beta"))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    other_key = httpx.get(f"{guarded.url}/v2/models/sd-embedded", headers=bearer("key-alpha"))
    assert other_key.status_code == 200


def test_a_full_unet_answers_503_and_unavailable_without_disturbing_the_running_job(
    guarded: RunningService,
) -> None:
    owner = bearer("key-gamma")
    created = httpx.post(
        f"{guarded.url}/v1/jobs",
        json={"prompt": "a slow one", "steps": 150, "width": 256, "height": 256},
        headers=owner,
        timeout=30,
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    with httpx.stream(
        "GET", f"{guarded.url}/v1/jobs/{job_id}/events", headers=owner, timeout=120
    ) as events:
        for line in events.iter_lines():
            if line == "event: progress":
                break  # the job holds the UNet's only slot now

    busy = httpx.post(
        f"{guarded.url}/v1/generate",
        json={"prompt": "x", "steps": 2},
        headers=bearer("key-delta"),
        timeout=60,
    )
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
    assert busy.json()["error"]["code"] == "queue_full"
    with pytest.raises(grpc.RpcError) as raised:
        stub(guarded).ModelInfer(
            infer_request("sd-embedded", "x", {"steps": 2}),
            timeout=60,
            metadata=grpc_key("key-delta"),
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(raised.value.trailing_metadata() or ())["retry-after"] == "2"

    status = httpx.get(f"{guarded.url}/v1/jobs/{job_id}", headers=owner, timeout=30).json()
    assert status["status"] == "running" and status["error"] is None, json.dumps(status)
    httpx.delete(f"{guarded.url}/v1/jobs/{job_id}", headers=owner, timeout=30)
