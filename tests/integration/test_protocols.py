"""OpenAI-compatible images, KServe v1, CDN image URLs and the result cache, end to end."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration

PARAMS = {"prompt": "a paper boat on a puddle", "seed": 31, "steps": 5, "scheduler": "euler"}


def generate_png(service: RunningService, **fields: Any) -> bytes:
    answer = httpx.post(
        service.url + "/v1/generate",
        json={**PARAMS, **fields},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def openai_client(service: RunningService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def test_the_official_openai_sdk_gets_the_same_image(service: RunningService) -> None:
    extra = {k: v for k, v in PARAMS.items() if k != "prompt"}
    answer = openai_client(service).images.generate(
        prompt=PARAMS["prompt"],
        n=1,
        size="128x128",
        response_format="b64_json",
        model="sd-embedded",
        extra_body=extra,
    )
    assert len(answer.data) == 1
    assert base64.b64decode(answer.data[0].b64_json or "") == generate_png(service)


def test_openai_url_answers_point_at_cacheable_images(service: RunningService) -> None:
    answer = openai_client(service).images.generate(
        prompt="a kite over a beach",
        n=2,
        size="64x64",
        response_format="url",
        extra_body={"seed": 4, "steps": 3},
    )
    urls = [item.url or "" for item in answer.data]
    assert len(set(urls)) == 2 and all(u.startswith("/v1/images/") for u in urls)
    first = httpx.get(service.url + urls[0], timeout=30)
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = first.headers["etag"]
    again = httpx.get(service.url + urls[0], headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(service.url + "/v1/images/" + "0" * 40 + ".png").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "status_error", "param"),
    [
        ({"size": "100x100"}, openai.UnprocessableEntityError, "size"),
        ({"size": "big"}, openai.UnprocessableEntityError, "size"),
        ({"n": 9}, openai.UnprocessableEntityError, "n"),
        ({"model": "dall-e-3"}, openai.NotFoundError, None),
        ({"extra_body": {"stepz": 3}}, openai.UnprocessableEntityError, "stepz"),
    ],
)
def test_openai_errors_have_openai_shape(
    service: RunningService, kwargs: dict[str, Any], status_error: type, param: str | None
) -> None:
    with pytest.raises(status_error) as caught:
        openai_client(service).images.generate(prompt="x", **kwargs)
    error = caught.value.body  # type: ignore[attr-defined]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_kserve_v1_lists_the_model_and_predicts_the_same_image(service: RunningService) -> None:
    assert httpx.get(service.url + "/v1/models").json() == {"models": ["sd-embedded"]}
    assert httpx.get(service.url + "/v1/models/sd-embedded", timeout=30).json()["ready"] is True
    answer = httpx.post(
        service.url + "/v1/models/sd-embedded:predict", json={"instances": [PARAMS]}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["seeds"] == [31]
    assert base64.b64decode(prediction["images"][0]) == generate_png(service)


def test_kserve_v1_errors(service: RunningService) -> None:
    unknown = httpx.post(service.url + "/v1/models/other:predict", json={"instances": [PARAMS]})
    assert unknown.status_code == 404
    bad = httpx.post(
        service.url + "/v1/models/sd-embedded:predict",
        json={"instances": [PARAMS, {"prompt": "x", "steps": 0}]},
        timeout=120,
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "instances[1].steps"
    assert httpx.post(service.url + "/v1/models/sd-embedded:predict", json=[1]).status_code == 400


def test_determined_requests_come_from_the_result_cache(service: RunningService) -> None:
    fields = {"prompt": "a snow globe", "seed": 77, "steps": 4}
    first = httpx.post(service.url + "/v1/generate", json=fields, timeout=120).json()
    second = httpx.post(service.url + "/v1/generate", json=fields, timeout=120).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["images"][0]["b64_data"] == first["images"][0]["b64_data"]
    assert "unet" not in second["timings_ms"] and "result_cache" in second["timings_ms"]
    unseeded = {"prompt": "a snow globe", "steps": 4}
    assert (
        httpx.post(service.url + "/v1/generate", json=unseeded, timeout=120).json()["cached"]
        is False
    )


def test_a_client_deadline_answers_504_and_frees_the_service(service: RunningService) -> None:
    slow = {"prompt": "a very slow request", "steps": 150, "width": 512, "height": 512}
    answer = httpx.post(
        service.url + "/v1/generate", json=slow, headers={"X-Timeout-S": "0.5"}, timeout=120
    )
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "deadline_exceeded"
    assert "0.5 s deadline" in answer.json()["error"]["message"]
    # The cancelled work leaves its UNet slot (the job alone would take a minute here).
    deadline = time.monotonic() + 45
    active = None
    while time.monotonic() < deadline:
        time.sleep(2)
        metrics = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("ray_sd_unet_active_requests{")
        ]
        active = max(values) if values else None
        if active == 0:
            break
    assert active == 0, f"the UNet still runs the cancelled job (active={active})"
    assert len(generate_png(service, seed=90)) > 100


def test_a_malformed_deadline_header_is_named(service: RunningService) -> None:
    answer = httpx.post(
        service.url + "/v1/generate", json=PARAMS, headers={"X-Timeout-S": "soon"}, timeout=30
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "X-Timeout-S"


def test_openapi_document_covers_every_rest_route(service: RunningService) -> None:
    document = httpx.get(service.url + "/openapi.json", timeout=30).json()
    paths = document["paths"]
    for path in (
        "/v1/generate",
        "/v1/images/generations",
        "/v1/models/{model}:predict",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/images/{name}",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
    ):
        assert path in paths, path
        for operation in paths[path].values():
            assert {"200", "202"} & set(operation["responses"]), path
    for path in (
        "/v1/generate",
        "/v1/images/generations",
        "/v1/models/{model}:predict",
        "/v1/jobs",
    ):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"], path
        assert "422" in paths[path]["post"]["responses"]
    generate = paths["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert generate["schema"]["required"] == ["prompt"]
    assert "image/png" in paths["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert (
        "webhook_url"
        in paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"
        ]
    )
    assert "requestBody" in paths["/v2/models/{model_name}/infer"]["post"]
    assert "/v2/repository/models/{model_name}/load" not in paths  # not served here


def test_cors_lets_the_configured_origin_call_the_api(service: RunningService) -> None:
    preflight = httpx.options(
        service.url + "/v1/jobs",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    stranger = httpx.options(
        service.url + "/v1/jobs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_oversized_bodies_get_413_on_every_protocol(service: RunningService) -> None:
    huge = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
    for path in ("/v1/generate", "/v2/models/sd-embedded/infer", "/v1/jobs"):
        answer = httpx.post(
            service.url + path, content=huge, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 413, (path, answer.text[:200])
        assert "limit" in answer.text
    assert httpx.get(service.url + "/v2/health/live").status_code == 200
