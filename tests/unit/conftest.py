"""Plain-torch components of the embedded model, loaded once for the engine tests (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from serving.engine.decoder import VaeDecoderRunner
from serving.engine.denoiser import ContinuousBatchingEngine, DenoiseJob
from serving.engine.schedulers import SCHEDULER_CLASSES, SchedulerFactory
from serving.engine.text import TextEncoderRunner
from serving.models import loader
from serving.models.device import Placement

CPU = Placement(torch.device("cpu"), torch.float32)


@dataclass
class Components:
    source: str
    text: TextEncoderRunner
    decoder: VaeDecoderRunner
    unet: torch.nn.Module
    schedulers: SchedulerFactory
    pipeline: StableDiffusionPipeline

    def engine(self, **options: int) -> ContinuousBatchingEngine:
        return ContinuousBatchingEngine(self.unet, self.schedulers, CPU, **options)

    def job(
        self,
        prompt: str,
        *,
        negative: str = "",
        steps: int = 8,
        guidance: float = 7.5,
        seed: int = 0,
        scheduler: str = "ddim",
        size: tuple[int, int] = (128, 128),
    ) -> DenoiseJob:
        positive, negative_embeds = self.text.encode([prompt, negative])
        return DenoiseJob(
            prompt_embeds=positive,
            negative_embeds=negative_embeds if guidance > 1 else None,
            height=size[0],
            width=size[1],
            steps=steps,
            guidance_scale=guidance,
            seed=seed,
            scheduler=scheduler,
        )

    def reference_image(self, job_args: dict, prompt: str) -> np.ndarray:
        """StableDiffusionPipeline's own output for the same parameters, as uint8."""
        pipe = self.pipeline
        pipe.scheduler = SCHEDULER_CLASSES[job_args.get("scheduler", "ddim")].from_config(
            pipe.scheduler.config
        )
        size = job_args.get("size", (128, 128))
        images = pipe(
            prompt,
            negative_prompt=job_args.get("negative", ""),
            num_inference_steps=job_args.get("steps", 8),
            guidance_scale=job_args.get("guidance", 7.5),
            height=size[0],
            width=size[1],
            generator=torch.Generator().manual_seed(job_args.get("seed", 0)),
            output_type="np",
        ).images
        return (images[0] * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def components(embedded_model_dir: Path) -> Components:
    source = str(embedded_model_dir)
    pipeline = StableDiffusionPipeline.from_pretrained(source)
    pipeline.set_progress_bar_config(disable=True)
    return Components(
        source=source,
        text=TextEncoderRunner(
            loader.load_tokenizer(source),
            loader.load_text_encoder(source, CPU),
            CPU,
            model_id=source,
            cache_size=64,
        ),
        decoder=VaeDecoderRunner(loader.load_vae(source, CPU), CPU),
        unet=loader.load_unet(source, CPU),
        schedulers=SchedulerFactory(loader.load_scheduler_config(source)),
        pipeline=pipeline,
    )


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
