"""The data plane's StageClient and Store over Ray deployment handles: the only code that calls
`.remote()`. A caller that is cancelled cancels the call in its replica too (the UNet then frees
the batch slot at its next step), the one cancellation rule of serving/dataplane/stages.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar, cast

import numpy as np
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving.dataplane.jobs import JobEvent, JobEventKind, JobResult, JobStatus, JobView
from serving.dataplane.results import StoredImage
from serving.dataplane.stages import (
    DenoiseJob,
    DenoiseResult,
    ImageLatents,
    StepProgress,
    TextEmbedding,
)
from serving.dataplane.store import ResultHit
from serving.errors import ErrorDetail, ServingError, StageLost

PROBE_TIMEOUT_S = 2.0
# What a call raises when the replica running it died or is being replaced.
LOST = (RayActorError, ActorUnavailableError)
T = TypeVar("T")
logger = logging.getLogger(__name__)


async def answer(response: Any) -> Any:
    """A DeploymentResponse's result; cancelling the awaiting task cancels the call in its
    replica."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


async def streamed(generator: DeploymentResponseGenerator) -> AsyncGenerator[Any, None]:
    """A streaming call's items; closing this iterator early cancels the call in its replica."""
    try:
        async for item in generator:
            yield item
    finally:
        generator.cancel()  # a no-op once the stream has ended


class RayStages:
    def __init__(
        self, text_encoder: DeploymentHandle, unet: DeploymentHandle, vae: DeploymentHandle
    ) -> None:
        self._text_encoder = text_encoder
        self._unet = unet
        self._vae = vae

    async def encode_text(
        self, text: str, loras: tuple[tuple[str, float], ...] = ()
    ) -> TextEmbedding:
        call = self._text_encoder.encode.remote
        embedding = await once_more(lambda: answer(call((text, loras))), "text")
        if isinstance(embedding, ServingError):  # this prompt's adapter did not load
            raise embedding
        return cast(TextEmbedding, embedding)

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        """The stream, told to report only its first step: whether denoising had begun is what
        decides between sending the request again and answering 503."""
        async with aclosing(self._denoise(job, preview=False, first_step_only=True)) as stream:
            async for item in stream:
                if isinstance(item, DenoiseResult):
                    return item
        raise RuntimeError("the UNet's stream ended without a result")

    def denoise_stream(
        self, job: DenoiseJob, preview: bool
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        return self._denoise(job, preview, first_step_only=False)

    async def _denoise(
        self, job: DenoiseJob, preview: bool, first_step_only: bool
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        """Sent again, once, to another replica when the first one stopped before its first
        step; StageLost (503) when it stopped mid-denoise, at once, never at the deadline."""
        for attempt in (1, 2):
            began = False
            method = self._unet.options(stream=True).denoise_with_progress
            stream = method.remote(job, preview, first_step_only)
            try:
                async for item in streamed(cast(DeploymentResponseGenerator, stream)):
                    if isinstance(item, ServingError):  # a refusal, sent as a value
                        raise item
                    began = began or isinstance(item, StepProgress)
                    yield item
                return
            except LOST as error:
                if began or attempt == 2:
                    raise StageLost(
                        "the UNet replica denoising this request stopped; retry the request"
                    ) from error
                logger.warning("a UNet replica stopped before denoising began; sending again")

    async def decode(self, latents: np.ndarray) -> np.ndarray:
        return await once_more(lambda: answer(self._vae.decode.remote(latents)), "VAE")

    async def encode_image(self, pixels: np.ndarray) -> ImageLatents:
        return await once_more(lambda: answer(self._vae.encode.remote(pixels)), "VAE")

    async def readiness(self) -> dict[str, bool]:
        stages = {"text_encoder": self._text_encoder, "unet": self._unet, "vae": self._vae}
        answers = await asyncio.gather(*(probe(handle) for handle in stages.values()))
        return dict(zip(stages, answers, strict=True))


async def once_more(call: Callable[[], Awaitable[T]], stage: str) -> T:
    """A call sent again, once, when the replica that took it stopped (it is idempotent and
    denoises nothing); StageLost when the second one is lost too."""
    try:
        return await call()
    except LOST:
        logger.warning("a %s replica stopped during a call; sending it again", stage)
    try:
        return await call()
    except LOST as error:
        raise StageLost(f"the {stage} stage lost two replicas in a row; retry") from error


async def probe(handle: DeploymentHandle) -> bool:
    """Whether a replica of the deployment has loaded and answers within PROBE_TIMEOUT_S."""
    try:
        return bool(await asyncio.wait_for(answer(handle.ready.remote()), PROBE_TIMEOUT_S))
    except Exception:
        return False


class RayStore:
    """The Store protocol over the one ResultStore replica."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def get_image(self, digest: str) -> StoredImage | None:
        return await answer(self._handle.get_image.remote(digest))

    async def lookup_result(self, key: str) -> ResultHit | None:
        return await answer(self._handle.lookup_result.remote(key))

    async def keep(self, images: list[StoredImage], key: str | None, seeds: list[int]) -> list[str]:
        return await answer(self._handle.keep.remote(images, key, seeds))

    async def add_feedback(self, row: dict[str, Any]) -> None:
        await answer(self._handle.add_feedback.remote(row))

    async def feedback(self, offset: int, limit: int) -> list[dict[str, Any]]:
        return await answer(self._handle.feedback.remote(offset, limit))

    async def create_job(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> JobView:
        return await answer(
            self._handle.create_job.remote(job_id, parameters, steps_total, webhook_url)
        )

    async def get_job(self, job_id: str) -> JobView | None:
        return await answer(self._handle.get_job.remote(job_id))

    async def report_job(
        self, job_id: str, kind: JobEventKind, data: dict[str, Any], advance: int = 1
    ) -> bool:
        return await answer(self._handle.report_job.remote(job_id, kind, data, advance))

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        result: JobResult | None = None,
        error: ErrorDetail | None = None,
    ) -> JobView | None:
        return await answer(self._handle.finish_job.remote(job_id, status, result, error))

    async def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        await answer(self._handle.record_webhook.remote(job_id, delivery))

    async def cancel_job(self, job_id: str) -> JobView | None:
        return await answer(self._handle.cancel_job.remote(job_id))

    def job_events(self, job_id: str, after: int = -1) -> AsyncGenerator[JobEvent | None, None]:
        stream = self._handle.options(stream=True).job_events.remote(job_id, after)
        return streamed(cast(DeploymentResponseGenerator, stream))

    async def take_token(self, client: str, per_minute: float, burst: int) -> float:
        return await answer(self._handle.take_token.remote(client, per_minute, burst))

    async def ready(self) -> bool:
        return await probe(self._handle)
