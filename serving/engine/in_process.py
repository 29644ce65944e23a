"""The three stages in one process, behind the data plane's StageClient: the same runners the
Ray deployments wrap, without Ray. Tests use it, and so can a single-process run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from serving.dataplane.stages import (
    DenoiseJob,
    DenoiseResult,
    ImageLatents,
    StepProgress,
    TextEmbedding,
)
from serving.engine.compiled import choose_fast_path
from serving.engine.decoder import VaeDecoderRunner
from serving.engine.denoiser import ContinuousBatchingEngine, EngineStats
from serving.engine.encoder import VaeEncoderRunner
from serving.engine.lora import text_adapters_from_settings, unet_adapters_from_settings
from serving.engine.text import Loras, TextEncoderRunner
from serving.errors import InvalidArgument
from serving.metrics import Meter, UNetMetrics, cache_lookups
from serving.models import loader
from serving.models.device import choose_placement
from serving.settings import Settings, TextEncoderStage, UNetStage

In = TypeVar("In")
Out = TypeVar("Out")


class InProcessStages:
    """Text encoder and VAE each run on a thread of their own (one batch at a time, as their
    replicas do); the UNet engine runs its own thread and batches across requests."""

    def __init__(
        self,
        text: TextEncoderRunner,
        engine: ContinuousBatchingEngine,
        decoder: VaeDecoderRunner,
        encoder: VaeEncoderRunner,
    ) -> None:
        self._text = text
        self._engine = engine
        self._decoder = decoder
        self._encoder = encoder
        self._text_thread = ThreadPoolExecutor(1, thread_name_prefix="text-encoder")
        self._vae_thread = ThreadPoolExecutor(1, thread_name_prefix="vae")
        engine.start()

    @classmethod
    def load(cls, settings: Settings, model: str, meter: Meter) -> InProcessStages:
        """The stages of a served model, sized by its stage settings."""
        placement = choose_placement(settings)
        source = loader.resolve_source(settings.served_models()[model].source, settings)
        text_encoder = settings.stage("text_encoder", model)
        unet = settings.stage("unet", model)
        assert isinstance(text_encoder, TextEncoderStage) and isinstance(unet, UNetStage)
        vae = loader.load_vae(source, placement)  # one model for both directions
        return cls(
            TextEncoderRunner.load(
                source,
                placement,
                cache_size=text_encoder.cache_size,
                lookups=cache_lookups(meter),
                adapters=text_adapters_from_settings(settings, text_encoder, source, meter),
            ),
            ContinuousBatchingEngine.load(
                source,
                placement,
                max_batch_size=unet.max_batch_size,
                max_queue=unet.max_queue,
                metrics=UNetMetrics.create(meter),
                fast_path=choose_fast_path(settings, placement, unet.max_batch_size),
                adapters=unet_adapters_from_settings(settings, unet, source, meter),
            ),
            VaeDecoderRunner(vae, placement),
            VaeEncoderRunner(vae, placement),
        )

    async def encode_text(
        self, text: str, loras: tuple[tuple[str, float], ...] = ()
    ) -> TextEmbedding:
        def encode(items: list[tuple[str, Loras]]) -> list[TextEmbedding | InvalidArgument]:
            return self._text.encode_each([t for t, _ in items], [a for _, a in items])

        (embedding,) = await _on(self._text_thread, encode, [(text, loras)])
        if isinstance(embedding, InvalidArgument):
            raise embedding
        return embedding

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        return await self._engine.denoise(job)

    def denoise_stream(
        self, job: DenoiseJob, preview: bool
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        return self._engine.denoise_stream(job, preview)

    async def decode(self, latents: np.ndarray) -> np.ndarray:
        (image,) = await _on(self._vae_thread, self._decoder.decode, [latents])
        return image

    async def encode_image(self, pixels: np.ndarray) -> ImageLatents:
        (latents,) = await _on(self._vae_thread, self._encoder.encode, [pixels])
        return latents

    def unet_stats(self) -> EngineStats:
        """Requests in the UNet's batch and waiting for a slot."""
        return self._engine.stats()

    async def readiness(self) -> dict[str, bool]:
        try:
            self._engine.check_health()
            unet = True
        except RuntimeError:
            unet = False
        return {"text_encoder": True, "unet": unet, "vae": True}

    def close(self) -> None:
        self._engine.stop()
        self._text_thread.shutdown(cancel_futures=True)
        self._vae_thread.shutdown(cancel_futures=True)


async def _on(
    thread: ThreadPoolExecutor, function: Callable[[list[In]], list[Out]], items: list[In]
) -> list[Out]:
    return await asyncio.get_running_loop().run_in_executor(thread, function, items)
