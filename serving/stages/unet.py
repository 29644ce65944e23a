"""The UNetDenoiser deployment: a thin Ray wrapper around the continuous-batching engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from serving.engine.denoiser import (
    ContinuousBatchingEngine,
    DenoiseJob,
    EngineStats,
    IterationReport,
    Ticket,
)
from serving.engine.preview import latent_preview
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


@dataclass(frozen=True)
class StepProgress:
    """One finished denoising step of one image; `preview` is [h/8, w/8, 3] uint8 when asked."""

    step: int
    total: int
    preview: np.ndarray | None


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
        return self._finished(ticket, latents)

    async def denoise_with_progress(
        self, job: DenoiseJob, preview: bool = False
    ) -> AsyncIterator[StepProgress | DenoiseResult]:
        """Streamed: a StepProgress after every step, then the DenoiseResult."""
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[StepProgress] = asyncio.Queue()

        def on_step(done: int, total: int, latents: torch.Tensor) -> None:  # engine thread
            image = latent_preview(latents) if preview else None
            loop.call_soon_threadsafe(steps.put_nowait, StepProgress(done, total, image))

        ticket = self._engine.submit(job, on_step=on_step)
        finished = asyncio.wrap_future(ticket.future)
        try:
            while not finished.done():
                next_step = asyncio.ensure_future(steps.get())
                either: set[asyncio.Future[Any]] = {next_step, finished}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if next_step.done():
                    yield next_step.result()
                else:
                    next_step.cancel()
            while not steps.empty():
                yield steps.get_nowait()
            latents = finished.result()
        except (asyncio.CancelledError, GeneratorExit):
            ticket.cancel()  # the batch slot is freed at the next step
            raise
        yield self._finished(ticket, latents)

    def _finished(self, ticket: Ticket, latents: np.ndarray) -> DenoiseResult:
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
