"""The VAEDecoder deployment: latents → uint8 images, request-batched."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from serving.engine.decoder import VaeDecoderRunner
from serving.models import loader
from serving.models.device import choose_placement, configure_threads
from serving.settings import Settings
from serving.stages.batching import tune_batching


@serve.deployment(name="VAEDecoder")
class VAEDecoder:
    def __init__(self, settings: Settings) -> None:
        configure_threads(settings, settings.vae)
        placement = choose_placement(settings)
        source = loader.resolve_model_source(settings)
        self._runner = VaeDecoderRunner(loader.load_vae(source, placement), placement)
        tune_batching(self.decode, settings.decoder_max_batch_size, settings.decoder_batch_wait_s)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._runner.decode, latents)

    def ready(self) -> bool:
        return True
