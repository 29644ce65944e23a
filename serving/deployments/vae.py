"""The VAEDecoder deployment: latents → uint8 images, request-batched; and input images → their
latent distribution (image-to-image), one VAE for both."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from serving.dataplane.stages import ImageLatents
from serving.deployments._replica import prepare_replica, tune_batching
from serving.engine.decoder import VaeDecoderRunner
from serving.engine.encoder import VaeEncoderRunner
from serving.models import loader
from serving.settings import Settings, VAEStage


@serve.deployment(name="VAEDecoder")
class VAEDecoder:
    def __init__(self, settings: Settings, model: str) -> None:
        stage, placement, source, _ = prepare_replica(settings, "vae", model)
        assert isinstance(stage, VAEStage)
        vae = loader.load_vae(source, placement)
        self._runner = VaeDecoderRunner(vae, placement)
        self._encoder = VaeEncoderRunner(vae, placement)
        tune_batching(self.decode, stage.max_batch_size, stage.batch_wait_s)

    @serve.batch
    async def decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._runner.decode, latents)

    async def encode(self, pixels: np.ndarray) -> ImageLatents:
        (latents,) = await asyncio.to_thread(self._encoder.encode, [pixels])
        return latents

    def ready(self) -> bool:
        return True
