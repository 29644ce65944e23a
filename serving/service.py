"""The one generation call every protocol uses: request → text encoder → UNet → VAE → images."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from ray.serve.handle import DeploymentHandle

from serving.engine.denoiser import DenoiseJob
from serving.prompts import PromptGuard
from serving.request import GenerateParams, GenerationRequest, resolve
from serving.settings import Settings


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: list[np.ndarray]
    seeds: list[int]
    timings_ms: dict[str, float]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stages:
    text_encoder: DeploymentHandle
    unet: DeploymentHandle
    vae: DeploymentHandle

    def all(self) -> dict[str, DeploymentHandle]:
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae}


class GenerationService:
    def __init__(
        self, settings: Settings, stages: Stages, guard: PromptGuard, native_size: int
    ) -> None:
        self.settings = settings
        self._stages = stages
        self._guard = guard
        self._native_size = native_size

    def resolve(self, params: GenerateParams) -> GenerationRequest:
        """Defaults applied and every limit checked; raises InvalidArgument naming the field."""
        return resolve(params, self.settings.limits, self.settings.defaults, self._native_size)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        warnings = self._guard.check(request)
        started = time.perf_counter()
        guided = request.guidance_scale > 1.0
        texts = [request.prompt, request.negative_prompt] if guided else [request.prompt]
        embeds = await asyncio.gather(*(self._stages.text_encoder.encode.remote(t) for t in texts))
        encoded = time.perf_counter()

        seeds = request.seeds()
        jobs = [
            DenoiseJob(
                prompt_embeds=embeds[0],
                negative_embeds=embeds[1] if guided else None,
                height=request.height,
                width=request.width,
                steps=request.steps,
                guidance_scale=request.guidance_scale,
                seed=seed,
                scheduler=request.scheduler,
            )
            for seed in seeds
        ]
        denoised = await asyncio.gather(*(self._stages.unet.denoise.remote(job) for job in jobs))
        denoise_done = time.perf_counter()

        images = await asyncio.gather(
            *(self._stages.vae.decode.remote(result.latents) for result in denoised)
        )
        decoded = time.perf_counter()
        timings = {
            "text_encoder": (encoded - started) * 1000,
            "unet_queue": max(result.queued_ms for result in denoised),
            "unet": (denoise_done - encoded) * 1000,
            "vae": (decoded - denoise_done) * 1000,
        }
        return GenerationResult(request, list(images), seeds, timings, warnings)

    async def readiness(self, timeout_s: float = 2.0) -> dict[str, bool]:
        """Which stages have a replica that finished loading and answers."""

        async def probe(handle: DeploymentHandle) -> bool:
            try:
                return bool(await asyncio.wait_for(handle.ready.remote(), timeout_s))
            except Exception:
                return False

        names = list(self._stages.all())
        answers = await asyncio.gather(*(probe(h) for h in self._stages.all().values()))
        return dict(zip(names, answers, strict=True))
