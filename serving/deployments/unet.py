"""The UNetDenoiser deployment: a thin Ray wrapper around the continuous-batching engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from serving.dataplane.stages import DenoiseJob, DenoiseResult, StepProgress
from serving.deployments._replica import RayMeter, keep_publishing, prepare_replica
from serving.engine.compiled import choose_fast_path
from serving.engine.denoiser import ContinuousBatchingEngine
from serving.engine.lora import unet_adapters_from_settings
from serving.errors import InvalidArgument, QueueFull, ServingError
from serving.metrics import UNetMetrics
from serving.settings import Settings, UNetStage


@serve.deployment(name="UNetDenoiser")
class UNetDenoiser:
    def __init__(self, settings: Settings, model: str) -> None:
        stage, placement, source, engine_threads = prepare_replica(settings, "unet", model)
        assert isinstance(stage, UNetStage)
        self._engine = ContinuousBatchingEngine.load(
            source,
            placement,
            max_batch_size=stage.max_batch_size,
            max_queue=stage.max_queue,
            metrics=UNetMetrics.create(RayMeter()),
            torch_threads=engine_threads,
            fast_path=choose_fast_path(settings, placement, stage.max_batch_size),
            adapters=unet_adapters_from_settings(settings, stage, source, RayMeter()),
        )
        self._engine.start()
        self._stop_publishing = keep_publishing(self._engine.publish_load)

    async def denoise_with_progress(
        self, job: DenoiseJob, preview: bool = False, first_step_only: bool = False
    ) -> AsyncIterator[StepProgress | DenoiseResult | ServingError]:
        """Streamed (handle.options(stream=True)): a StepProgress after every step (or only
        the first: the caller learns that denoising began), then the DenoiseResult. A refusal
        (QueueFull; InvalidArgument for an adapter that does not load) is the stream's one
        item: raised, Serve would log every refusal of an overload as a failed request with its
        traceback."""
        reported = False
        try:
            async for item in self._engine.denoise_stream(job, preview):
                if isinstance(item, StepProgress) and first_step_only:
                    if reported:
                        continue
                    reported = True
                yield item
        except (QueueFull, InvalidArgument) as refused:
            yield refused

    def check_health(self) -> None:
        """Ray Serve calls this periodically: a dead engine thread makes Serve replace the
        replica."""
        self._engine.check_health()

    def ready(self) -> bool:
        return True

    def __del__(self) -> None:
        self._stop_publishing.set()
        self._engine.stop()
