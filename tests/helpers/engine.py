"""The embedded model's plain-torch components, for the engine tests (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from serving.dataplane.stages import DenoiseJob
from serving.engine.decoder import VaeDecoderRunner
from serving.engine.denoiser import ContinuousBatchingEngine
from serving.engine.schedulers import SCHEDULER_CLASSES, SchedulerFactory
from serving.engine.text import TextEncoderRunner
from serving.metrics import UNetMetrics
from serving.models.device import Placement
from tests.helpers.images import as_uint8

CPU = Placement(torch.device("cpu"), torch.float32)


@dataclass
class Components:
    source: str
    text: TextEncoderRunner
    decoder: VaeDecoderRunner
    unet: torch.nn.Module
    schedulers: SchedulerFactory
    pipeline: StableDiffusionPipeline

    def engine(
        self,
        max_batch_size: int = 8,
        max_queue: int = 64,
        metrics: UNetMetrics | None = None,
        torch_threads: int | None = None,
    ) -> ContinuousBatchingEngine:
        return ContinuousBatchingEngine(
            self.unet,
            self.schedulers,
            CPU,
            vae_scale_factor=8,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            metrics=metrics,
            torch_threads=torch_threads,
        )

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
        positive, negative_embedding = self.text.encode([prompt, negative])
        return DenoiseJob(
            conditioning={"encoder_hidden_states": positive.hidden},
            negative_conditioning=(
                {"encoder_hidden_states": negative_embedding.hidden} if guidance > 1 else None
            ),
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
        return as_uint8(images[0])
