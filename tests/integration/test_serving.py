"""The four-deployment Serve app: its images equal the diffusers pipeline's, alone and batched
together across replicas' handles."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
)
from PIL import Image

from tests.helpers.images import as_uint8, max_pixel_difference
from tests.helpers.live_service import DEFAULT_MODEL, SDXL_MODEL, RunningService
from tests.helpers.requests import first_image, generate

pytestmark = pytest.mark.integration


def rendered(service: RunningService, **fields: Any) -> dict[str, Any]:
    body = generate(service.url, **fields)
    assert body["cached"] is False  # the service runs without a result cache: this rendered
    return body


def test_health_reports_every_stage_of_every_model_ready(service: RunningService) -> None:
    with service.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
        models = client.get("/v1/models").json()
    assert ready.status_code == 200
    stages = {
        f"{model}/{stage}": True
        for model in (DEFAULT_MODEL, SDXL_MODEL)
        for stage in ("text_encoder", "unet", "vae")
    }
    assert ready.json() == {"ready": True, "stages": {**stages, "result_store": True}}
    assert models == {"models": [DEFAULT_MODEL, SDXL_MODEL]}


def test_the_sdxl_model_served_through_its_deployments_equals_its_pipeline(
    service: RunningService, family_dirs: dict[str, Path]
) -> None:
    params = {"prompt": "a lighthouse", "seed": 8, "steps": 6, "negative_prompt": "fog"}
    body = rendered(service, model=SDXL_MODEL, **params)
    assert body["model"] == SDXL_MODEL and body["parameters"]["original_size"] == [128, 128]
    pipeline = DiffusionPipeline.from_pretrained(str(family_dirs["sdxl"]))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        params["prompt"],
        negative_prompt=params["negative_prompt"],
        num_inference_steps=params["steps"],
        generator=torch.Generator().manual_seed(params["seed"]),
        output_type="np",
    ).images[0]
    assert max_pixel_difference(first_image(body), as_uint8(expected)) <= 1


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
    served = first_image(rendered(service, **params))

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
    assert max_pixel_difference(served, as_uint8(expected)) <= 1


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
    solo = [first_image(rendered(service, **params)) for params in requests]

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = first_image(rendered(service, **requests[index]))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    bad_status = []
    for index, thread in enumerate(threads):
        thread.start()
        time.sleep(0.15)  # a load shape, not a wait: each joins while earlier ones denoise
        if index == 2:
            with service.client() as client:
                bad = client.post("/v1/generate", json={"prompt": "x", "steps": -3})
            bad_status.append(bad.status_code)
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert bad_status == [422]
    for index, image in enumerate(solo):
        assert max_pixel_difference(results[index], image) <= 1, requests[index]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_an_edit_through_the_deployments_equals_the_image_to_image_pipeline(
    service: RunningService, embedded_model_dir: Path, family_dirs: dict[str, Path], family: str
) -> None:
    """The VAE deployment encodes the picture, the UNet starts from it: equal to diffusers'
    image-to-image pipeline of the model's family for the same picture, prompt and seed."""
    model, source, pipeline_class = (
        (DEFAULT_MODEL, embedded_model_dir, StableDiffusionImg2ImgPipeline)
        if family == "sd"
        else (SDXL_MODEL, family_dirs["sdxl"], StableDiffusionXLImg2ImgPipeline)
    )
    rng = np.random.default_rng(8)
    picture = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    params = {"prompt": "a lighthouse", "seed": 21, "steps": 8, "strength": 0.6}
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    served = first_image(rendered(service, model=model, image=image, **params))

    pipeline = pipeline_class.from_pretrained(str(source))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        params["prompt"],
        image=picture,
        strength=params["strength"],
        num_inference_steps=params["steps"],
        generator=torch.Generator().manual_seed(params["seed"]),
        output_type="np",
    ).images[0]
    assert max_pixel_difference(served, as_uint8(expected)) <= 1


def test_an_inpainting_through_the_deployments_equals_the_inpainting_pipeline(
    service: RunningService, embedded_model_dir: Path
) -> None:
    """The VAE deployment encodes the picture and the masked picture, the UNet blends the kept
    area back after every step: StableDiffusionInpaintPipeline's image for the same inputs."""
    rng = np.random.default_rng(9)
    picture = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    mask_pixels = np.zeros((128, 128), dtype=np.uint8)
    mask_pixels[20:90, 40:120] = 255
    mask = Image.fromarray(mask_pixels, "L")
    files = {}
    for name, image in (("image", picture), ("mask", mask)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    params = {"prompt": "a lighthouse", "seed": 23, "steps": 8, "strength": 0.9}
    served = first_image(rendered(service, model=DEFAULT_MODEL, **files, **params))
    pipeline = StableDiffusionInpaintPipeline.from_pretrained(str(embedded_model_dir))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        params["prompt"],
        image=picture,
        mask_image=mask,
        strength=params["strength"],
        num_inference_steps=params["steps"],
        generator=torch.Generator().manual_seed(params["seed"]),
        output_type="np",
    ).images[0]
    assert max_pixel_difference(served, as_uint8(expected)) <= 1
