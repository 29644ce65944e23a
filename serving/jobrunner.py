"""Runs async jobs inside the ingress replica that accepted them: GenerationService.produce with
a progress sink that reports every denoising step to the shared job board (ResultStore), stops
when the job is cancelled, and delivers the signed webhook at the end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from ray.serve.handle import DeploymentHandle

from serving import webhooks
from serving.errors import as_serving_error
from serving.jobs import JobStatus
from serving.request import GenerationRequest
from serving.service import EncodedResult, GenerationService, ProgressEvent
from serving.settings import Settings

logger = logging.getLogger(__name__)
ImageUrl = Callable[[EncodedResult, int], str]


def preview_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def job_result(result: EncodedResult, image_url: ImageUrl) -> dict[str, Any]:
    return {
        "images": [
            {
                "url": image_url(result, index),
                "digest": image.digest,
                "seed": image.seed,
                "media_type": result.media_type,
            }
            for index, image in enumerate(result.images)
        ],
        "cached": result.cached,
        "timings_ms": {name: round(value, 2) for name, value in result.timings_ms.items()},
        "warnings": result.warnings,
    }


class JobRunner:
    def __init__(
        self,
        service: GenerationService,
        board: DeploymentHandle,
        settings: Settings,
        image_url: ImageUrl,
        observe: Callable[[EncodedResult], None],
    ) -> None:
        self._service = service
        self._board = board
        self._settings = settings
        self._image_url = image_url
        self._observe = observe
        self._running: dict[str, asyncio.Task[None]] = {}

    async def submit(
        self,
        request: GenerationRequest,
        *,
        determined: bool,
        preview: bool,
        webhook_url: str | None,
    ) -> dict[str, Any]:
        job_id = uuid.uuid4().hex
        total = request.steps * request.num_images
        view: dict[str, Any] = await self._board.create_job.remote(
            job_id, request.model_dump(), total, webhook_url
        )
        task = asyncio.create_task(self._run(job_id, request, determined, preview, webhook_url))
        self._running[job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job_id, None))
        return view

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        view: dict[str, Any] | None = await self._board.cancel_job.remote(job_id)
        task = self._running.get(job_id)
        if task is not None:  # running here: stop now rather than at its next step report
            task.cancel()
        return view

    async def _run(
        self,
        job_id: str,
        request: GenerationRequest,
        determined: bool,
        preview: bool,
        webhook_url: str | None,
    ) -> None:
        async def report(event: ProgressEvent) -> None:
            data: dict[str, Any] = {
                "image_index": event.image_index,
                "step": event.step,
                "total": event.total,
            }
            if event.preview is not None:
                data["preview"] = preview_data_url(event.preview)
            if await self._board.report_job.remote(job_id, "progress", data):
                task = self._running.get(job_id)
                if task is not None:
                    task.cancel()

        try:
            result = await self._service.produce(
                request, determined=determined, progress=report, preview=preview
            )
            self._observe(result)
            final = await self._board.finish_job.remote(
                job_id, JobStatus.SUCCEEDED, result=job_result(result, self._image_url)
            )
        except asyncio.CancelledError:
            final = await self._board.finish_job.remote(job_id, JobStatus.CANCELLED)
        except Exception as error:
            serving_error = as_serving_error(error)
            if serving_error is None:
                logger.exception("job %s failed", job_id)
                details = {"code": "internal", "message": "generation failed; see server logs"}
            else:
                details = serving_error.to_dict()
            final = await self._board.finish_job.remote(job_id, JobStatus.FAILED, error=details)
        if webhook_url is not None and final is not None:
            await self._send_webhook(job_id, webhook_url, final)

    async def _send_webhook(self, job_id: str, url: str, payload: dict[str, Any]) -> None:
        secret = self._settings.webhook_secret
        if secret is None:  # checked at submit; the setting cannot change while running
            return
        with contextlib.suppress(asyncio.CancelledError):
            delivery = await webhooks.deliver(
                url,
                payload,
                secret.get_secret_value().encode(),
                timeout_s=self._settings.webhook_timeout_s,
                attempts=self._settings.webhook_attempts,
            )
            await self._board.record_webhook.remote(job_id, delivery)
