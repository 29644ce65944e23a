"""The UNetDenoiser deployment: a thin Ray wrapper around the continuous-batching engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from serving.engine.denoiser import ContinuousBatchingEngine, DenoiseJob, EngineStats
from serving.engine.schedulers import SchedulerFactory
from serving.models import loader
from serving.models.device import choose_placement, configure_threads
from serving.settings import Settings


@dataclass(frozen=True)
class DenoiseResult:
    latents: np.ndarray
    queued_ms: float
    denoise_ms: float


@serve.deployment(name="UNetDenoiser")
class UNetDenoiser:
    def __init__(self, settings: Settings) -> None:
        configure_threads(settings)
        placement = choose_placement(settings)
        source = loader.resolve_model_source(settings)
        self._engine = ContinuousBatchingEngine(
            loader.load_unet(source, placement),
            SchedulerFactory(loader.load_scheduler_config(source)),
            placement,
            vae_scale_factor=loader.read_model_info(source).vae_scale_factor,
            max_batch_size=settings.unet_max_batch_size,
            max_queue=settings.unet_max_queue,
        )
        self._engine.start()

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        ticket = self._engine.submit(job)
        try:
            latents = await asyncio.wrap_future(ticket.future)
        except asyncio.CancelledError:
            # The client went away: the engine frees the batch slot at the next step.
            ticket.cancel()
            raise
        started = ticket.started_at or ticket.submitted_at
        return DenoiseResult(
            latents=latents,
            queued_ms=(started - ticket.submitted_at) * 1000,
            denoise_ms=(time.monotonic() - started) * 1000,
        )

    def stats(self) -> EngineStats:
        return self._engine.stats()

    def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        self._engine.stop()
