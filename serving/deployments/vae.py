"""The VAEDecoder deployment: latents → uint8 images, request-batched."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from serving.deployments._replica import prepare_replica, tune_batching
from serving.engine.decoder import VaeDecoderRunner
from serving.settings import Settings, VAEStage


@serve.deployment(name="VAEDecoder")
class VAEDecoder:
    def __init__(self, settings: Settings, model: str) -> None:
        stage, placement, source, _ = prepare_replica(settings, "vae", model)
        assert isinstance(stage, VAEStage)
        self._runner = VaeDecoderRunner.load(source, placement)
        tune_batching(self.decode, stage.max_batch_size, stage.batch_wait_s)

    @serve.batch
    async def decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(self._runner.decode, latents)

    def ready(self) -> bool:
        return True
