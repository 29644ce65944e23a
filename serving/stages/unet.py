"""The UNetDenoiser deployment: a thin Ray wrapper around the continuous-batching engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from serving.engine.denoiser import (
    ContinuousBatchingEngine,
    DenoiseJob,
    EngineStats,
    IterationReport,
)
from serving.engine.schedulers import SchedulerFactory
from serving.metrics import UNetMetrics
from serving.models import loader
from serving.models.device import choose_placement, configure_threads
from serving.settings import Settings
from serving.stages.refresh import keep_publishing


@dataclass(frozen=True)
class DenoiseResult:
    latents: np.ndarray
    queued_ms: float
    denoise_ms: float


@serve.deployment(name="UNetDenoiser")
class UNetDenoiser:
    def __init__(self, settings: Settings) -> None:
        configure_threads(settings, settings.unet)
        placement = choose_placement(settings)
        source = loader.resolve_model_source(settings)
        self._metrics = UNetMetrics.create()
        self._engine = ContinuousBatchingEngine(
            loader.load_unet(source, placement),
            SchedulerFactory(loader.load_scheduler_config(source)),
            placement,
            vae_scale_factor=loader.read_model_info(source).vae_scale_factor,
            max_batch_size=settings.unet_max_batch_size,
            max_queue=settings.unet_max_queue,
            observer=self._observe,
        )
        self._engine.start()
        self._stop_publishing = keep_publishing(self._publish_load)

    def _publish_load(self) -> None:
        stats = self._engine.stats()
        self._metrics.active.set(stats.active)
        self._metrics.queue_depth.set(stats.queued)

    def _observe(self, report: IterationReport) -> None:
        self._metrics.batch_size.observe(report.requests)
        self._metrics.steps.inc(report.requests)
        self._metrics.active.set(report.active)
        self._metrics.queue_depth.set(report.queued)

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        ticket = self._engine.submit(job)
        self._metrics.queue_depth.set(self._engine.stats().queued)
        try:
            latents = await asyncio.wrap_future(ticket.future)
        except asyncio.CancelledError:
            # The client went away: the engine frees the batch slot at the next step.
            ticket.cancel()
            raise
        started = ticket.started_at or ticket.submitted_at
        self._metrics.queue_seconds.observe(started - ticket.submitted_at)
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
        self._stop_publishing.set()
        self._engine.stop()
