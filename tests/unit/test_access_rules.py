"""One access policy on both transports (API keys, rate limits, open health and page), body
limits, a full UNet and deadlines, against an ingress with keys, a small token bucket and room
for exactly one request in the UNet."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from serving.client.v2 import RETRY_AFTER_METADATA
from serving.grpc.protos import pb
from tests.helpers.local_service import CORS_ORIGIN, LocalService, local_service
from tests.helpers.net import wait_until
from tests.helpers.v2 import MODEL, infer_request

KEYS = ("key-alpha", "key-beta", "key-gamma", "key-delta", "key-epsilon", "key-zeta")
BURST = 5


@pytest.fixture(scope="module")
def guarded(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalService]:
    keys = tmp_path_factory.mktemp("secrets") / "api-keys"
    keys.write_text("\n".join(KEYS) + "\n")
    with local_service(
        embedded_model_dir,
        api_keys_file=keys,
        rate_limit_per_minute=2,
        rate_limit_burst=BURST,
        unet={"max_batch_size": 1, "max_queue": 0},
    ) as service:
        yield service


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def grpc_key(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer", "Basic key-alpha", "key-alpha", "Bearer key-alph"]
)
def test_missing_or_wrong_keys_get_401_without_echoing_them(
    guarded: LocalService, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    answer = httpx.post(f"{guarded.url}/v1/generate", json={"prompt": "x"}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert "key-al" not in answer.text and "wrong" not in answer.text


def test_api_keys_guard_http_and_grpc_but_not_health_or_the_page(guarded: LocalService) -> None:
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        accepted = client.post(
            "/v1/generate", json={"prompt": "x", "steps": 2}, headers=bearer("key-alpha")
        )
        assert accepted.status_code == 200, accepted.text
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", "/"):
            for _ in range(BURST + 1):  # open operations are never rate limited either
                assert client.get(path).status_code == 200, path
        assert client.get(f"/v2/models/{MODEL}").status_code == 401  # metadata needs a key

    stub = guarded.grpc_stub()
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(infer_request("x", steps=2).to_grpc(), timeout=60)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = stub.ModelInfer(
        infer_request("x", steps=2).to_grpc(), timeout=120, metadata=grpc_key("key-alpha")
    )
    assert answer.outputs[0].name == "image_bytes"
    for _ in range(BURST + 1):  # probes need no key
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready


def test_one_token_bucket_per_key_across_protocols(guarded: LocalService) -> None:
    stub = guarded.grpc_stub()
    for _ in range(BURST):
        stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30, metadata=grpc_key("key-beta"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30, metadata=grpc_key("key-beta"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(raised.value.trailing_metadata() or ())[RETRY_AFTER_METADATA]) >= 1

    limited = httpx.get(f"{guarded.url}/v2/models/{MODEL}", headers=bearer("key-beta"))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) == 30
    assert limited.json()["code"] == "rate_limited"  # v2's error shape
    openai = httpx.post(
        f"{guarded.url}/v1/images/generations", json={"prompt": "x"}, headers=bearer("key-beta")
    )
    assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
    other_key = httpx.get(f"{guarded.url}/v2/models/{MODEL}", headers=bearer("key-alpha"))
    assert other_key.status_code == 200


def test_a_full_unet_answers_503_and_unavailable_without_disturbing_the_running_job(
    guarded: LocalService,
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
        guarded.grpc_stub().ModelInfer(  # no seed: never a result-cache answer
            infer_request("x", steps=2, seed=None).to_grpc(),
            timeout=60,
            metadata=grpc_key("key-delta"),
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(raised.value.trailing_metadata() or ())[RETRY_AFTER_METADATA] == "2"

    status = httpx.get(f"{guarded.url}/v1/jobs/{job_id}", headers=owner, timeout=30).json()
    assert status["status"] == "running" and status["error"] is None, json.dumps(status)
    httpx.delete(f"{guarded.url}/v1/jobs/{job_id}", headers=owner, timeout=30)
    assert wait_until(lambda: guarded.stages.unet_stats().active == 0, timeout_s=10)


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(
    guarded: LocalService,
) -> None:
    key = bearer("key-epsilon")
    # One request first: the UNet (its only slot busy) measures its pace.
    warm = httpx.post(
        f"{guarded.url}/v1/generate", json={"prompt": "x", "steps": 4}, headers=key, timeout=60
    )
    assert warm.status_code == 200, warm.text
    slow = {"prompt": "a very slow request", "steps": 150, "width": 512, "height": 512}
    started = time.monotonic()
    answer = httpx.post(
        f"{guarded.url}/v1/generate", json=slow, headers={**key, "X-Timeout-S": "0.5"}, timeout=60
    )
    # Minutes of work against half a second: refused before any of it starts, to retry later.
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert answer.json()["error"]["code"] == "queue_full"
    assert "after its deadline" in answer.json()["error"]["message"]
    assert time.monotonic() - started < 0.5
    assert guarded.stages.unet_stats().active == 0
    after = httpx.post(
        f"{guarded.url}/v1/generate", json={"prompt": "x", "steps": 2}, headers=key, timeout=60
    )
    assert after.status_code == 200, after.text


def test_a_malformed_deadline_header_is_named(local: LocalService) -> None:
    answer = httpx.post(
        f"{local.url}/v1/generate", json={"prompt": "x"}, headers={"X-Timeout-S": "soon"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "X-Timeout-S"


def test_cors_lets_the_configured_origin_call_the_api(local: LocalService) -> None:
    preflight = httpx.options(
        local.url + "/v1/jobs",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    stranger = httpx.options(
        local.url + "/v1/jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_oversized_bodies_get_413_on_every_protocol(local: LocalService) -> None:
    """Routes that take pictures (edits) allow SD_MAX_PICTURE_REQUEST_BYTES (20 MiB), the others
    SD_MAX_REQUEST_BYTES (1 MiB); past either the body is refused before it is read whole."""
    huge = b'{"prompt": "' + b"x" * (21 << 20) + b'"}'
    for path in ("/v1/generate", f"/v2/models/{MODEL}/infer", "/v1/jobs", "/v1/images/edits"):
        answer = httpx.post(
            local.url + path, content=huge, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 413, (path, answer.text[:200])
        assert "limit is 20971520 bytes" in answer.text
    two_mib = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    answer = httpx.post(
        local.url + "/v1/images/generations",
        content=two_mib,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and "limit is 1048576 bytes" in answer.text
    picture_sized = httpx.post(  # 2 MiB is a picture's size: read, then refused for its prompt
        local.url + "/v1/generate", content=two_mib, headers={"Content-Type": "application/json"}
    )
    assert picture_sized.status_code == 422, picture_sized.text[:200]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off once past the limit
        yield b'{"prompt": "'
        for _ in range(21_000):
            yield b"x" * 1000
        yield b'"}'

    chunked = httpx.post(f"{local.url}/v1/generate", content=chunks(), timeout=60)
    assert chunked.status_code == 413 and "payload_too_large" in chunked.text
    assert httpx.get(local.url + "/v2/health/live").status_code == 200
