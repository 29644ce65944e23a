"""`/v1/generate`, stored images and health, on the real HTTP app over the in-process stages."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService
from tests.helpers.requests import first_image, generate


def test_health(local: LocalService) -> None:
    with local.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "stages": {"text_encoder": True, "unet": True, "vae": True, "result_store": True},
    }


def test_same_seed_same_bytes_and_other_seed_other_image(uncached: LocalService) -> None:
    params = {"prompt": "a lighthouse", "steps": 8, "scheduler": "euler_a"}
    first = generate(uncached.url, seed=7, **params)
    again = generate(uncached.url, seed=7, **params)
    other = generate(uncached.url, seed=8, **params)
    assert first["cached"] is False and again["cached"] is False  # rendered twice
    assert first["images"][0]["b64_data"] == again["images"][0]["b64_data"]
    difference = np.abs(first_image(first).astype(float) - first_image(other).astype(float))
    assert difference.mean() > 5, "a different seed must give a visibly different image"


def test_response_reports_seeds_parameters_and_stage_timings(uncached: LocalService) -> None:
    body = generate(uncached.url, prompt="two kites", seed=41, num_images=2, steps=4)
    assert body["seeds"] == [41, 42]
    assert [image["seed"] for image in body["images"]] == [41, 42]
    assert body["parameters"]["steps"] == 4 and body["parameters"]["width"] == 128
    assert body["model"] == "sd-embedded" and body["warnings"] == []
    for stage in ("text_encoder", "unet_queue", "unet", "vae", "encode", "total"):
        assert body["timings_ms"][stage] >= 0
    assert body["timings_ms"]["total"] >= body["timings_ms"]["unet"]
    # The second image is the one a single-image request with the next seed gives.
    second = pixels(base64.b64decode(body["images"][1]["b64_data"]))
    alone = first_image(generate(uncached.url, prompt="two kites", seed=42, steps=4))
    assert max_pixel_difference(second, alone) <= 1


@pytest.mark.parametrize(
    ("accept", "media_type", "magic"),
    [
        ("image/png", "image/png", b"\x89PNG"),
        ("image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
        ("image/webp", "image/webp", b"RIFF"),
    ],
)
def test_raw_image_when_the_client_accepts_an_image(
    local: LocalService, accept: str, media_type: str, magic: bytes
) -> None:
    with local.client() as client:
        response = client.post(
            "/v1/generate",
            json={"prompt": "a sailboat", "seed": 3, "steps": 4},
            headers={"Accept": accept},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.content.startswith(magic)
    assert response.headers["x-seed"] == "3"
    assert "total;dur=" in response.headers["server-timing"]
    assert response.headers["content-location"].startswith("/v1/images/")
    assert pixels(response.content).shape == (128, 128, 3)


def test_other_sizes_are_served(local: LocalService) -> None:
    body = generate(local.url, prompt="a wide field", width=192, height=64, steps=4, seed=1)
    assert first_image(body).shape == (64, 192, 3)


def test_determined_requests_come_from_the_result_cache(local: LocalService) -> None:
    fields = {"prompt": "a snow globe", "seed": 77, "steps": 4}
    first = generate(local.url, **fields)
    second = generate(local.url, **fields)
    assert first["cached"] is False and second["cached"] is True
    assert second["images"][0]["b64_data"] == first["images"][0]["b64_data"]
    assert "unet" not in second["timings_ms"] and "result_cache" in second["timings_ms"]
    unseeded = {"prompt": "a snow globe", "steps": 4}
    assert generate(local.url, **unseeded)["cached"] is False


def test_stored_images_are_cdn_cacheable(local: LocalService) -> None:
    body = generate(local.url, prompt="a kite over a beach", seed=4, steps=3)
    url = body["images"][0]["url"]
    assert url.startswith("/v1/images/") and url.endswith(".png")
    with local.client() as client:
        first = client.get(url)
        assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
        assert first.content == base64.b64decode(body["images"][0]["b64_data"])
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        again = client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert client.get(url.replace(".png", ".webp")).status_code == 404
        assert client.get("/v1/images/" + "0" * 40 + ".png").status_code == 404


LONG_PROMPT = "a very detailed painting of " + "mountains " * 60


@pytest.mark.parametrize(
    ("body", "status", "field", "fragment"),
    [
        ({"prompt": ""}, 422, "prompt", "must not be empty"),
        ({"steps": 5}, 422, "prompt", "is required"),
        ({"prompt": "x", "scheduler": "k_lms"}, 422, "scheduler", "choose one of ddim"),
        ({"prompt": "x", "width": 100}, 422, "width", "multiple of 8"),
        ({"prompt": "x", "height": 4096}, 422, "height", "between 64 and 1024"),
        ({"prompt": "x", "steps": 0}, 422, "steps", "between 1 and 150"),
        ({"prompt": "x", "steps": 1000}, 422, "steps", "between 1 and 150"),
        ({"prompt": "x", "steps": "many"}, 422, "steps", "valid integer"),
        ({"prompt": "x", "stpes": 20}, 422, "stpes", "unknown field"),
        ({"prompt": "x", "num_images": 9}, 422, "num_images", "between 1 and 4"),
        ({"prompt": "x", "guidance_scale": 99}, 422, "guidance_scale", "between 0 and 30"),
        ({"prompt": "x", "output_format": "bmp"}, 422, "output_format", "png, jpeg, webp"),
        ({"prompt": "x", "seed": "abc"}, 422, "seed", "integer"),
        ({"prompt": LONG_PROMPT}, 422, "prompt", "rejected, not truncated"),
        ({"prompt": "x", "negative_prompt": LONG_PROMPT}, 422, "negative_prompt", "limit is 77"),
    ],
)
def test_bad_input_names_the_field_and_limit(
    local: LocalService, body: dict[str, Any], status: int, field: str, fragment: str
) -> None:
    with local.client() as client:
        response = client.post("/v1/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_argument" and error["field"] == field
    assert error["message"].startswith(f"{field}: ") and fragment in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"prompt": "x"}', "text/plain"),
    ],
)
def test_malformed_bodies_are_400(local: LocalService, content: bytes, content_type: str) -> None:
    with local.client() as client:
        response = client.post(
            "/v1/generate", content=content, headers={"Content-Type": content_type}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_request"


def test_a_body_without_content_type_is_read_as_json(local: LocalService) -> None:
    with local.client() as client:
        response = client.post(
            "/v1/generate", content=b'{"prompt": "no header", "steps": 2, "seed": 1}'
        )
    assert response.status_code == 200, response.text


def test_raw_image_of_several_images_is_refused(local: LocalService) -> None:
    with local.client() as client:
        response = client.post(
            "/v1/generate", json={"prompt": "x", "num_images": 2}, headers={"Accept": "image/png"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "num_images"


def test_unknown_routes_answer_404_in_our_shape(local: LocalService) -> None:
    with local.client() as client:
        answer = client.get("/v1/nothing-here")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_refusals_are_counted_by_reason(local: LocalService) -> None:
    before = local.meter.value("sd_rejected_requests", reason="invalid_argument")
    with local.client() as client:
        assert client.post("/v1/generate", json={"prompt": "x", "steps": 0}).status_code == 422
    after = local.meter.value("sd_rejected_requests", reason="invalid_argument")
    assert after == before + 1
    requests = local.meter.value("sd_requests", route="/v1/generate", protocol="http", status="422")
    assert requests >= 1
