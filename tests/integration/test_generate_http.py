"""/v1/generate and health against the real four-deployment Serve app."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

from serving.codecs import decode_image
from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration


def generate(service: RunningService, **fields: Any) -> dict[str, Any]:
    with service.client() as client:
        response = client.post("/v1/generate", json=fields)
    assert response.status_code == 200, response.text
    return response.json()


def first_image(body: dict[str, Any]) -> np.ndarray:
    return decode_image(base64.b64decode(body["images"][0]["b64_data"]))


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_health(service: RunningService) -> None:
    with service.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "stages": {"text_encoder": True, "unet": True, "vae": True, "result_store": True},
    }


@pytest.mark.parametrize(
    ("name", "scheduler_class"),
    [("ddim", DDIMScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler)],
)
def test_served_image_equals_the_diffusers_pipeline(
    service: RunningService, embedded_model_dir: Path, name: str, scheduler_class: type
) -> None:
    params = {
        "prompt": "a red apple on a wooden table",
        "negative_prompt": "blurry, low quality",
        "seed": 1234,
        "steps": 15,
        "guidance_scale": 6.5,
        "scheduler": name,
    }
    served = first_image(generate(service, **params))

    pipeline = StableDiffusionPipeline.from_pretrained(str(embedded_model_dir))
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        params["prompt"],
        negative_prompt=params["negative_prompt"],
        num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        generator=torch.Generator().manual_seed(params["seed"]),
        output_type="np",
    ).images[0]
    assert served.shape == (128, 128, 3)
    assert max_difference(served, (expected * 255).round().astype(np.uint8)) <= 1


def test_same_seed_same_bytes_and_other_seed_other_image(service: RunningService) -> None:
    params = {"prompt": "a lighthouse", "steps": 8, "scheduler": "euler_a"}
    first = generate(service, seed=7, **params)
    again = generate(service, seed=7, **params)
    other = generate(service, seed=8, **params)
    assert first["images"][0]["b64_data"] == again["images"][0]["b64_data"]
    difference = np.abs(first_image(first).astype(float) - first_image(other).astype(float))
    assert difference.mean() > 5, "a different seed must give a visibly different image"


def test_response_reports_seeds_parameters_and_stage_timings(service: RunningService) -> None:
    body = generate(service, prompt="two kites", seed=41, num_images=2, steps=4)
    assert body["seeds"] == [41, 42]
    assert [image["seed"] for image in body["images"]] == [41, 42]
    assert body["parameters"]["steps"] == 4 and body["parameters"]["width"] == 128
    for stage in ("text_encoder", "unet_queue", "unet", "vae", "encode", "total"):
        assert body["timings_ms"][stage] >= 0
    assert body["timings_ms"]["total"] >= body["timings_ms"]["unet"]
    # The second image is the one a single-image request with the next seed gives.
    second = decode_image(base64.b64decode(body["images"][1]["b64_data"]))
    alone = first_image(generate(service, prompt="two kites", seed=42, steps=4))
    assert max_difference(second, alone) <= 1


@pytest.mark.parametrize(
    ("accept", "media_type", "magic"),
    [
        ("image/png", "image/png", b"\x89PNG"),
        ("image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
        ("image/webp", "image/webp", b"RIFF"),
    ],
)
def test_raw_image_when_the_client_accepts_an_image(
    service: RunningService, accept: str, media_type: str, magic: bytes
) -> None:
    with service.client() as client:
        response = client.post(
            "/v1/generate",
            json={"prompt": "a sailboat", "seed": 3, "steps": 4},
            headers={"Accept": accept},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.content.startswith(magic)
    assert response.headers["x-seed"] == "3"
    assert "unet;dur=" in response.headers["server-timing"]
    assert decode_image(response.content).shape == (128, 128, 3)


def test_other_sizes_are_served(service: RunningService) -> None:
    body = generate(service, prompt="a wide field", width=192, height=64, steps=4, seed=1)
    assert first_image(body).shape == (64, 192, 3)


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
        ({"prompt": "x", "num_images": 9}, 422, "num_images", "between 1 and 4"),
        ({"prompt": "x", "guidance_scale": 99}, 422, "guidance_scale", "between 0 and 30"),
        ({"prompt": "x", "output_format": "bmp"}, 422, "output_format", "png, jpeg, webp"),
        ({"prompt": "x", "seed": "abc"}, 422, "seed", "integer"),
        ({"prompt": LONG_PROMPT}, 422, "prompt", "rejected, not truncated"),
        ({"prompt": "x", "negative_prompt": LONG_PROMPT}, 422, "negative_prompt", "limit is 77"),
    ],
)
def test_bad_input_names_the_field_and_limit(
    service: RunningService, body: dict[str, Any], status: int, field: str, fragment: str
) -> None:
    with service.client() as client:
        response = client.post("/v1/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert fragment in error["message"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00", b"[1, 2]"])
def test_malformed_bodies_are_400(service: RunningService, content: bytes) -> None:
    with service.client() as client:
        response = client.post(
            "/v1/generate", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_request"


def test_raw_image_of_several_images_is_refused(service: RunningService) -> None:
    with service.client() as client:
        response = client.post(
            "/v1/generate", json={"prompt": "x", "num_images": 2}, headers={"Accept": "image/png"}
        )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "num_images"


def test_concurrent_requests_equal_their_solo_results(service: RunningService) -> None:
    """Different schedulers and step counts join the UNet batch at different moments; a bad
    request in the middle of it is refused without disturbing anyone."""
    requests = [
        {"prompt": "a castle", "scheduler": "ddim", "steps": 20, "seed": 1},
        {"prompt": "a forest", "scheduler": "dpmpp_2m", "steps": 12, "seed": 2},
        {
            "prompt": "a harbour",
            "scheduler": "euler_a",
            "steps": 16,
            "seed": 3,
            "negative_prompt": "people",
        },
        {"prompt": "a desert", "scheduler": "pndm", "steps": 8, "seed": 4, "guidance_scale": 1.0},
        {"prompt": "a glacier", "scheduler": "euler", "steps": 10, "seed": 5, "width": 64},
    ]
    solo = [first_image(generate(service, **params)) for params in requests]

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    bad_status: list[int] = []

    def run(index: int) -> None:
        try:
            results[index] = first_image(generate(service, **requests[index]))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for i, thread in enumerate(threads):
        thread.start()
        time.sleep(0.15)
        if i == 2:
            with service.client() as client:
                bad = client.post("/v1/generate", json={"prompt": "x", "steps": -3})
            bad_status.append(bad.status_code)
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert bad_status == [422]
    for index, image in enumerate(solo):
        assert max_difference(results[index], image) <= 1, requests[index]
