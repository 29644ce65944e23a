"""The one generation call every protocol uses: request → text encoder → UNet → VAE → images."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from serving.codecs import MEDIA_TYPES, encode_image
from serving.engine.denoiser import DenoiseJob
from serving.errors import DeadlineExceeded
from serving.prompts import PromptGuard
from serving.request import GenerateParams, GenerationRequest, resolve
from serving.results import StoredImage, request_key
from serving.settings import Settings
from serving.stages.unet import DenoiseResult


@dataclass(frozen=True)
class GenerationResult:
    request: GenerationRequest
    images: list[np.ndarray]
    seeds: list[int]
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    digest: str
    seed: int


@dataclass(frozen=True)
class EncodedResult:
    """What every protocol answers from: encoded images, their digests, timings, warnings."""

    request: GenerationRequest
    images: list[EncodedImage]
    timings_ms: dict[str, float]
    warnings: list[str]
    cached: bool

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.request.output_format]


@dataclass(frozen=True)
class ProgressEvent:
    """Image `image_index` finished denoising step `step` of `total`."""

    image_index: int
    step: int
    total: int
    preview: np.ndarray | None  # [h/8, w/8, 3] uint8, when asked for


ProgressSink = Callable[[ProgressEvent], Awaitable[None]]


@dataclass(frozen=True)
class Stages:
    text_encoder: DeploymentHandle
    unet: DeploymentHandle
    vae: DeploymentHandle
    results: DeploymentHandle

    def all(self) -> dict[str, DeploymentHandle]:
        return {
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae": self.vae,
            "result_store": self.results,
        }


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        stages: Stages,
        guard: PromptGuard,
        native_size: int,
        model_id: str,
    ) -> None:
        self.settings = settings
        self._model_id = model_id
        self._stages = stages
        self._guard = guard
        self._native_size = native_size

    @property
    def stages(self) -> Stages:
        return self._stages

    def resolve(self, params: GenerateParams) -> GenerationRequest:
        """Defaults applied and every limit checked; raises InvalidArgument naming the field."""
        return resolve(params, self.settings.limits, self.settings.defaults, self._native_size)

    def check_prompt(self, request: GenerationRequest) -> list[str]:
        """Warnings for the prompt (e.g. truncated); raises InvalidArgument when it is too long."""
        return self._guard.check(request)

    async def generate(
        self,
        request: GenerationRequest,
        progress: ProgressSink | None = None,
        preview: bool = False,
    ) -> GenerationResult:
        """Pixels from the three stages; callers go through `produce`, which checks the prompt.
        With `progress`, every denoising step of every image is reported as it happens."""
        started = time.perf_counter()
        guided = request.guidance_scale > 1.0
        texts = [request.prompt, request.negative_prompt] if guided else [request.prompt]
        embeds = await _all([self._stages.text_encoder.encode.remote(t) for t in texts])
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
        if progress is None:
            denoised = await _all([self._stages.unet.denoise.remote(job) for job in jobs])
        else:
            denoised = await _all(
                [self._denoise_reporting(job, i, progress, preview) for i, job in enumerate(jobs)]
            )
        denoise_done = time.perf_counter()

        images = await _all([self._stages.vae.decode.remote(r.latents) for r in denoised])
        decoded = time.perf_counter()
        timings = {
            "text_encoder": (encoded - started) * 1000,
            "unet_queue": max(result.queued_ms for result in denoised),
            "unet": (denoise_done - encoded) * 1000,
            "vae": (decoded - denoise_done) * 1000,
        }
        return GenerationResult(request, list(images), seeds, timings)

    async def _denoise_reporting(
        self, job: DenoiseJob, index: int, progress: ProgressSink, preview: bool
    ) -> DenoiseResult:
        stream = self._stages.unet.options(stream=True).denoise_with_progress.remote(job, preview)
        assert isinstance(stream, DeploymentResponseGenerator)
        try:
            async for item in stream:
                if isinstance(item, DenoiseResult):
                    return item
                await progress(ProgressEvent(index, item.step, item.total, item.preview))
        except asyncio.CancelledError:
            stream.cancel()  # the UNet frees the batch slot at its next step
            raise
        raise RuntimeError("the UNet's progress stream ended without a result")

    async def produce(
        self,
        request: GenerationRequest,
        *,
        determined: bool,
        timeout_s: float | None = None,
        progress: ProgressSink | None = None,
        preview: bool = False,
    ) -> EncodedResult:
        """Encoded images for a request; fully determined ones (client-given seed) come from the
        result cache when they were made before, without touching the GPU stages. Past the
        deadline the work is cancelled (the UNet frees the slot at its next step) and the
        client gets DeadlineExceeded."""
        limit = self.settings.request_timeout_s
        deadline = limit if timeout_s is None else min(limit, timeout_s)
        try:
            return await asyncio.wait_for(
                self._produce(request, determined, progress, preview), deadline
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request took longer than its {deadline:g} s deadline and was cancelled"
            ) from None

    async def _produce(
        self,
        request: GenerationRequest,
        determined: bool,
        progress: ProgressSink | None,
        preview: bool,
    ) -> EncodedResult:
        started = time.perf_counter()
        warnings = self.check_prompt(request)
        key = request_key(self._model_id, request) if determined else None
        if key is not None:
            hit = await self._stages.results.lookup.remote(key)
            if hit is not None:
                cached, stored = hit
                images = [
                    EncodedImage(image.data, digest, seed)
                    for image, digest, seed in zip(
                        stored, cached.digests, cached.seeds, strict=True
                    )
                ]
                elapsed = (time.perf_counter() - started) * 1000
                timings = {"result_cache": elapsed, "total": elapsed}
                return EncodedResult(request, images, timings, warnings, cached=True)
        result = await self.generate(request, progress, preview)
        before = time.perf_counter()
        encoded = [encode_image(pixels, request.output_format) for pixels in result.images]
        timings = dict(result.timings_ms)
        timings["encode"] = (time.perf_counter() - before) * 1000
        # One call stores the images and, for a determined request, remembers the result.
        digests = await self._stages.results.keep.remote(
            [(data, request.output_format) for data in encoded], key, result.seeds
        )
        timings["total"] = (time.perf_counter() - started) * 1000
        images = [
            EncodedImage(data, digest, seed)
            for data, digest, seed in zip(encoded, digests, result.seeds, strict=True)
        ]
        return EncodedResult(request, images, timings, warnings, cached=False)

    async def image(self, digest: str) -> StoredImage | None:
        stored: StoredImage | None = await self._stages.results.get_image.remote(digest)
        return stored

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


async def _all(responses: list[Any]) -> list[Any]:
    """Await stage calls together; if the caller is cancelled (deadline, client gone), cancel
    them in their replicas too, so the UNet frees the batch slot at its next step."""
    try:
        return list(await asyncio.gather(*responses))
    except asyncio.CancelledError:
        for response in responses:
            if isinstance(response, DeploymentResponse):
                response.cancel()
        raise
