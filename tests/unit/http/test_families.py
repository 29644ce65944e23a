"""Every family served over HTTP equals its diffusers pipeline (max pixel difference ≤ 1): SD
with v-prediction and zero-terminal-SNR betas, Turbo-style SD and SDXL, LCM, SDXL; alone, and
batched with requests that use other samplers, step counts and guidance."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from tests.helpers.images import as_uint8, max_pixel_difference
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.requests import at_once, first_image, generate

PROMPT = "a red apple on a wooden table"
# (family, request fields, the pipeline's own arguments for the same image)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "sd-v",
        {"steps": 8, "guidance_scale": 6.0, "guidance_rescale": 0.7, "negative_prompt": "fog"},
        {
            "num_inference_steps": 8,
            "guidance_scale": 6.0,
            "guidance_rescale": 0.7,
            "negative_prompt": "fog",
        },
    ),
    (
        "sd-turbo",
        {"steps": 2, "guidance_scale": 0.0},
        {"num_inference_steps": 2, "guidance_scale": 0.0},
    ),
    ("lcm", {"steps": 4, "guidance_scale": 8.5}, {"num_inference_steps": 4, "guidance_scale": 8.5}),
    (
        "sdxl",
        {"steps": 6, "guidance_scale": 5.0},
        {"num_inference_steps": 6, "guidance_scale": 5.0},
    ),
    (
        "sdxl",
        {
            "steps": 6,
            "guidance_scale": 5.0,
            "negative_prompt": "blurry",
            "original_size": [256, 256],
            "crops_coords_top_left": [8, 0],
            "width": 192,
        },
        {
            "num_inference_steps": 6,
            "guidance_scale": 5.0,
            "negative_prompt": "blurry",
            "original_size": (256, 256),
            "crops_coords_top_left": (8, 0),
            "width": 192,
        },
    ),
    (
        "sdxl-turbo",
        {"steps": 2, "guidance_scale": 0.0},
        {"num_inference_steps": 2, "guidance_scale": 0.0},
    ),
]


@pytest.fixture(scope="module")
def served(family_dirs: dict[str, Path]) -> Iterator[dict[str, LocalService]]:
    """One ingress per family, each over its in-process stages (no result cache)."""
    services: dict[str, LocalService] = {}
    stack: list[Any] = []
    try:
        for family, directory in family_dirs.items():
            context = local_service(directory, result_cache_size=0, model_name=family)
            services[family] = context.__enter__()
            stack.append(context)
        yield services
    finally:
        for context in reversed(stack):
            context.__exit__(None, None, None)


def reference(directory: Path, fields: dict[str, Any], seed: int) -> np.ndarray:
    pipeline = DiffusionPipeline.from_pretrained(str(directory))
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        PROMPT, generator=torch.Generator().manual_seed(seed), output_type="np", **fields
    ).images[0]
    return as_uint8(image)


@pytest.mark.parametrize(("family", "fields", "pipeline_fields"), CASES)
def test_each_family_equals_its_diffusers_pipeline(
    served: dict[str, LocalService],
    family_dirs: dict[str, Path],
    family: str,
    fields: dict[str, Any],
    pipeline_fields: dict[str, Any],
) -> None:
    body = generate(served[family].url, prompt=PROMPT, seed=21, **fields)
    assert body["cached"] is False and body["model"] == family
    expected = reference(family_dirs[family], pipeline_fields, seed=21)
    assert max_pixel_difference(first_image(body), expected) <= 1


def test_sdxl_requests_of_every_kind_share_the_batch_and_equal_their_solo_images(
    served: dict[str, LocalService],
) -> None:
    service = served["sdxl"]
    requests = [
        {"scheduler": "euler", "steps": 10, "seed": 1},
        {"scheduler": "dpmpp_2m_karras", "steps": 6, "seed": 2, "negative_prompt": "fog"},
        {"scheduler": "unipc", "steps": 8, "seed": 3, "guidance_scale": 1.0},
        {"scheduler": "ddim", "steps": 7, "seed": 4, "original_size": [512, 512]},
        {"scheduler": "euler_a", "steps": 9, "seed": 5, "width": 64},
    ]

    def render(fields: dict[str, Any]) -> np.ndarray:
        return first_image(generate(service.url, prompt=PROMPT, **fields))

    solo = [render(fields) for fields in requests]
    batches_before = len(service.meter.observations("sd_unet_batch_size"))
    together = at_once([partial(render, fields) for fields in requests])
    for index, image in enumerate(solo):
        assert max_pixel_difference(together[index], image) <= 1, requests[index]
    # The four 128x128 requests (samplers, steps, guidance on and off) shared UNet forwards.
    batches = service.meter.observations("sd_unet_batch_size")[batches_before:]
    assert max(batches) >= 3, batches


@pytest.mark.parametrize(
    ("family", "fields", "field", "fragment"),
    [
        ("lcm", {"scheduler": "euler"}, "scheduler", "choose one of lcm, default"),
        ("lcm", {"steps": 20}, "steps", "between 1 and 8"),
        ("sdxl", {"scheduler": "lcm"}, "scheduler", "sdxl (sdxl)"),
        ("sdxl", {"original_size": [512]}, "original_size[1]", "required"),
        ("sd-v", {"target_size": [512, 512]}, "target_size", "takes no size conditioning"),
        ("sdxl-turbo", {"width": 100}, "width", "multiple of 8"),
    ],
)
def test_what_a_family_does_not_take_is_refused_naming_the_field(
    served: dict[str, LocalService], family: str, fields: dict[str, Any], field: str, fragment: str
) -> None:
    answer = httpx.post(served[family].url + "/v1/generate", json={"prompt": "x", **fields})
    assert answer.status_code == 422, answer.text
    assert (
        answer.json()["error"]["field"] == field and fragment in answer.json()["error"]["message"]
    )


def test_each_model_reports_its_family_defaults_and_samplers(
    served: dict[str, LocalService],
) -> None:
    expected = {
        "sd-v": ("sd-v", 20, 7.5, "v_prediction", 150),
        "sd-turbo": ("sd-turbo", 4, 0.0, "epsilon", 150),
        "lcm": ("lcm", 4, 8.5, "epsilon", 8),
        "sdxl": ("sdxl", 20, 5.0, "epsilon", 150),
        "sdxl-turbo": ("sdxl-turbo", 4, 0.0, "epsilon", 150),
    }
    for family, (kind, steps, guidance, prediction, max_steps) in expected.items():
        metadata = httpx.get(f"{served[family].url}/v2/models/{family}").json()
        parameters = metadata["parameters"]
        assert metadata["platform"] == f"diffusers/{kind}"
        assert parameters["family"] == kind and parameters["prediction_type"] == prediction
        assert parameters["defaults"]["steps"] == steps
        assert parameters["defaults"]["guidance_scale"] == guidance
        assert parameters["max_steps"] == max_steps  # the service's limit or the model's
        inputs = {tensor["name"] for tensor in metadata["inputs"]}
        assert ("original_size" in inputs) == kind.startswith("sdxl")
