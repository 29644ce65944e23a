"""LoRA adapters through the Ray deployments: requests with different adapters, sent together,
each equal StableDiffusionPipeline with its adapters loaded; an adapter that does not fit the
model's layers is refused with a 422 naming the field, by the ingress or by the UNet replica
(which goes on serving)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from serving.models.loras import LoraLibrary
from tests.helpers.images import max_pixel_difference
from tests.helpers.live_service import DEFAULT_MODEL, SDXL_MODEL, RunningService
from tests.helpers.loras import lora_reference
from tests.helpers.requests import first_image, generate

pytestmark = pytest.mark.integration

PROMPT = "a red circle on a white background"
SAMPLING = {"steps": 6, "scheduler": "ddim", "guidance_scale": 7.5}


def test_adapters_mixed_in_the_unet_batch_equal_the_pipeline(
    service: RunningService, embedded_model_dir: Path, lora_library: LoraLibrary
) -> None:
    cases = [(41, (("style-a", 0.8),)), (42, (("style-b", 1.0), ("style.c", -0.6))), (43, ())]

    def served(case: tuple[int, tuple[tuple[str, float], ...]]) -> object:
        seed, loras = case
        loras_field = [{"name": name, "scale": scale} for name, scale in loras]
        body = {"model": DEFAULT_MODEL, "prompt": PROMPT, "seed": seed, "loras": loras_field}
        return first_image(generate(service.url, **SAMPLING, **body))

    with ThreadPoolExecutor(len(cases)) as pool:
        images = list(pool.map(served, cases))
    for (seed, loras), image in zip(cases, images, strict=True):
        expected = lora_reference(
            str(embedded_model_dir), lora_library, PROMPT, seed=seed, loras=loras, steps=6
        )
        assert max_pixel_difference(image, expected) <= 1, loras  # type: ignore[arg-type]


def test_an_sd_adapter_is_listed_for_the_sd_model_only_and_refused_by_sdxl(
    service: RunningService,
) -> None:
    # Both embedded models take 256-wide text: their layers tell them apart.
    listed = httpx.get(service.url + "/v1/loras", timeout=30).json()["loras"]
    assert {entry["name"]: entry["models"] for entry in listed}["style-a"] == [DEFAULT_MODEL]
    answer = httpx.post(
        service.url + "/v1/generate",
        json={"model": SDXL_MODEL, "prompt": PROMPT, "steps": 2, "loras": [{"name": "style-a"}]},
        timeout=120,
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "loras[0].name" and "this model's takes" in error["message"]


def test_an_adapter_the_unet_cannot_load_is_a_422_from_the_replica(
    service: RunningService, lora_library: LoraLibrary
) -> None:
    """Layers named as in the original checkpoints (kohya's `input_blocks`) are checked by the
    UNet replica's loader, not the ingress: its refusal comes back through Ray as a 422, and
    the replica goes on serving."""
    assert lora_library.directory is not None
    prefix = "lora_unet_input_blocks_1_1_proj_in"
    path = lora_library.directory / "checkpoint-named.safetensors"
    save_file(
        {
            f"{prefix}.lora_down.weight": torch.zeros(4, 999),
            f"{prefix}.lora_up.weight": torch.zeros(32, 4),
            f"{prefix}.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    body = {"model": DEFAULT_MODEL, "prompt": PROMPT, "steps": 2}
    try:
        answer = httpx.post(
            service.url + "/v1/generate",
            json={**body, "loras": [{"name": "checkpoint-named"}]},
            timeout=120,
        )
    finally:
        path.unlink()  # the other tests' adapter pickers list only adapters that work
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "loras" and "does not fit this model's layers" in error["message"]
    after = httpx.post(service.url + "/v1/generate", json=body, timeout=120)
    assert after.status_code == 200, after.text
