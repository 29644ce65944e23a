"""The ResultStore deployment: the image store, the result cache and the async jobs, shared by
all ingress replicas (so it runs as one replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serving.jobs import JobBoard, JobEvent, JobStatus
from serving.lru import LruCache
from serving.metrics import cache_lookups
from serving.results import CachedResult, ImageStore, StoredImage
from serving.settings import Settings


@serve.deployment(name="ResultStore")
class ResultStore:
    def __init__(self, settings: Settings) -> None:
        self._images = ImageStore(settings.image_store_bytes)
        self._results: LruCache[str, CachedResult] = LruCache(settings.result_cache_size)
        self._lookups = cache_lookups()
        self._jobs = JobBoard(settings.max_jobs, settings.job_ttl_s)

    def get_image(self, digest: str) -> StoredImage | None:
        return self._images.get(digest)

    def lookup(self, key: str) -> tuple[CachedResult, list[StoredImage]] | None:
        """A cached result with all its images still stored, or None."""
        cached = self._results.get(key)
        images = [self._images.get(d) for d in cached.digests] if cached else []
        hit = cached is not None and all(image is not None for image in images)
        self._lookups.inc(tags={"cache": "result", "result": "hit" if hit else "miss"})
        if not hit or cached is None:
            return None
        return cached, [image for image in images if image is not None]

    def keep(self, images: list[tuple[bytes, str]], key: str | None, seeds: list[int]) -> list[str]:
        """Store the images; with a key, remember them as that request's result."""
        digests = [self._images.put(data, fmt) for data, fmt in images]
        if key is not None:
            self._results.put(key, CachedResult(digests, seeds))
        return digests

    # -- async jobs (every ingress replica reads and streams them from here)

    def create_job(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> dict[str, Any]:
        return self._jobs.create(job_id, parameters, steps_total, webhook_url)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    async def report_job(self, job_id: str, kind: str, data: dict[str, Any]) -> bool:
        return await self._jobs.report(job_id, kind, data)

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        return await self._jobs.finish(job_id, status, result=result, error=error)

    def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        self._jobs.record_webhook(job_id, delivery)

    def cancel_job(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.request_cancel(job_id)

    async def job_events(self, job_id: str, after: int = -1) -> AsyncIterator[JobEvent | None]:
        """Streamed (handle.options(stream=True)): the job's events, live until it ends."""
        async for event in self._jobs.events(job_id, after):
            yield event

    def ready(self) -> bool:
        return True
