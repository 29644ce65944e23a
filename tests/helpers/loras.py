"""LoRA adapters for the embedded test model, and the diffusers pipeline's image with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from serving.engine.lora import transformers_accepts_this_peft
from serving.engine.schedulers import SCHEDULER_CLASSES
from serving.models.loras import LoraLibrary
from serving.models.random_loras import write_random_lora
from tests.helpers.images import as_uint8

ADAPTERS = ("style-a", "style-b", "style.c")  # a dot, as file names may have


def write_adapters(source: str, directory: Path) -> LoraLibrary:
    """Three adapters in diffusers' layout, and the first again in kohya's."""
    for seed, name in enumerate(ADAPTERS, start=1):
        write_random_lora(source, directory / f"{name}.safetensors", seed=seed)
    write_random_lora(source, directory / "style-a-kohya.safetensors", seed=1, layout="kohya")
    return LoraLibrary(directory)


def lora_reference(
    source: str,
    library: LoraLibrary,
    prompt: str,
    *,
    seed: int,
    loras: tuple[tuple[str, float], ...],
    steps: int,
    scheduler: str = "ddim",
    guidance_scale: float = 7.5,
    size: int | None = None,
    pipeline_class: type = StableDiffusionPipeline,
) -> np.ndarray:
    """The family's pipeline (StableDiffusionPipeline by default) with the adapters loaded
    (`load_lora_weights`) and weighted (`set_adapters`) as its users do it, as uint8."""
    pipe = pipeline_class.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)
    for index, (name, _) in enumerate(loras):
        # diffusers' own loader; its text-encoder path needs transformers' PEFT check relaxed
        # (serving/engine/lora.py says why).
        with transformers_accepts_this_peft():
            pipe.load_lora_weights(str(library.get(name).path), adapter_name=f"adapter{index}")
    if loras:
        pipe.set_adapters(
            [f"adapter{index}" for index in range(len(loras))], [scale for _, scale in loras]
        )
    images = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images
    return as_uint8(images[0])
