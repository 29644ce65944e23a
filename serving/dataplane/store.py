"""Shared state behind one interface: finished images, the result-cache index, the job board and
the rate-limit buckets.

`InMemoryStore` is the local default; the Ray app runs it as the one `ResultStore` replica every
ingress replica talks to (serving/deployments/result_store.py), and `RayStore`
(serving/deployments/handles.py) speaks to it. With SD_REDIS_URL every ingress replica uses
`RedisStore` (serving/dataplane/redis_store.py) directly instead, and what it holds survives
restarts. Images go to the configured `ImageStore` (serving/dataplane/images.py) in both.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from serving.dataplane.images import ImageStore, image_store
from serving.dataplane.jobs import JobBoard, JobEvent, JobEventKind, JobResult, JobStatus, JobView
from serving.dataplane.results import CachedResult, StoredImage, image_digest
from serving.errors import ErrorDetail, RateLimited
from serving.lru import LruCache
from serving.settings import Settings

MAX_CLIENTS = 100_000  # buckets kept; the least recently seen are forgotten (they were full)
ResultHit = tuple[CachedResult, list[StoredImage]]


class Store(Protocol):
    # -- images and the result cache
    async def get_image(self, digest: str) -> StoredImage | None: ...

    async def lookup_result(self, key: str) -> ResultHit | None:
        """A cached result with all its images still stored, or None."""
        ...

    async def keep(self, images: list[StoredImage], key: str | None, seeds: list[int]) -> list[str]:
        """Store images (with what made them); with a key, remember them as that request's
        result. Returns their digests."""
        ...

    # -- feedback from production
    async def add_feedback(self, row: dict[str, Any]) -> None:
        """Keep a feedback row (the newest `SD_MAX_FEEDBACK`)."""
        ...

    async def feedback(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` feedback rows from `offset`, oldest kept first."""
        ...

    # -- async jobs
    async def create_job(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> JobView: ...

    async def get_job(self, job_id: str) -> JobView | None: ...

    async def report_job(
        self, job_id: str, kind: JobEventKind, data: dict[str, Any], advance: int = 1
    ) -> bool:
        """Record a job event (progress moves the job's step count by `advance`: more than one
        for the first step of an image resumed from its checkpoint); True when the job should
        stop."""
        ...

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        result: JobResult | None = None,
        error: ErrorDetail | None = None,
    ) -> JobView | None: ...

    async def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None: ...

    async def cancel_job(self, job_id: str) -> JobView | None: ...

    def job_events(self, job_id: str, after: int = -1) -> AsyncGenerator[JobEvent | None, None]:
        """The job's events after `after`, live until it ends; None is a keep-alive."""
        ...

    # -- rate limits
    async def take_token(self, client: str, per_minute: float, burst: int) -> float:
        """0 when the client may go, else the seconds until its next token."""
        ...

    async def ready(self) -> bool: ...


class TokenBuckets:
    """Per-client token buckets: `per_minute` sustained, `burst` at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: LruCache[str, tuple[float, float]] = LruCache(MAX_CLIENTS)

    def take(self, client: str, per_minute: float, burst: int) -> float:
        """0 when the request may go, else the seconds until the client's next token."""
        rate = per_minute / 60.0
        now = self._clock()
        tokens, last = self._buckets.get(client) or (float(burst), now)
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1:
            self._buckets.put(client, (tokens - 1, now))
            return 0.0
        self._buckets.put(client, (tokens, now))
        return (1 - tokens) / rate


async def images_of(images: ImageStore, cached: CachedResult) -> ResultHit | None:
    """The cached result with its images, or None when any of them is gone."""
    found = [await images.get(digest) for digest in cached.digests]
    kept = [image for image in found if image is not None]
    return (cached, kept) if len(kept) == len(found) else None


async def keep_images(images: ImageStore, finished: list[StoredImage]) -> list[str]:
    digests = []
    for image in finished:
        digest = image_digest(image.data)
        await images.put(digest, image)
        digests.append(digest)
    return digests


def rate_limited(wait_s: float) -> RateLimited:
    return RateLimited(
        "too many requests from this client; retry after the Retry-After delay",
        retry_after_s=max(1, math.ceil(wait_s)),
    )


class InMemoryStore:
    """Every piece of shared state in this process's memory, bounded: images by bytes (least
    recently used go first), results and buckets by count, jobs by count and age."""

    def __init__(self, settings: Settings) -> None:
        self._images = image_store(settings, shared=False)
        self._results: LruCache[str, CachedResult] = LruCache(settings.result_cache_size)
        self._jobs = JobBoard(settings.max_jobs, settings.job_ttl_s)
        self._buckets = TokenBuckets()
        self._feedback: deque[dict[str, Any]] = deque(maxlen=settings.max_feedback)

    async def get_image(self, digest: str) -> StoredImage | None:
        return await self._images.get(digest)

    async def lookup_result(self, key: str) -> ResultHit | None:
        cached = self._results.get(key)
        return None if cached is None else await images_of(self._images, cached)

    async def keep(self, images: list[StoredImage], key: str | None, seeds: list[int]) -> list[str]:
        digests = await keep_images(self._images, images)
        if key is not None:
            self._results.put(key, CachedResult(digests, seeds))
        return digests

    async def add_feedback(self, row: dict[str, Any]) -> None:
        self._feedback.append(row)

    async def feedback(self, offset: int, limit: int) -> list[dict[str, Any]]:
        return list(itertools.islice(self._feedback, offset, offset + limit))

    async def create_job(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> JobView:
        return self._jobs.create(job_id, parameters, steps_total, webhook_url)

    async def get_job(self, job_id: str) -> JobView | None:
        return self._jobs.get(job_id)

    async def report_job(
        self, job_id: str, kind: JobEventKind, data: dict[str, Any], advance: int = 1
    ) -> bool:
        return await self._jobs.report(job_id, kind, data, advance)

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        result: JobResult | None = None,
        error: ErrorDetail | None = None,
    ) -> JobView | None:
        return await self._jobs.finish(job_id, status, result=result, error=error)

    async def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        self._jobs.record_webhook(job_id, delivery)

    async def cancel_job(self, job_id: str) -> JobView | None:
        return self._jobs.request_cancel(job_id)

    async def job_events(
        self, job_id: str, after: int = -1
    ) -> AsyncGenerator[JobEvent | None, None]:
        async for event in self._jobs.events(job_id, after):
            yield event

    async def take_token(self, client: str, per_minute: float, burst: int) -> float:
        return self._buckets.take(client, per_minute, burst)

    async def ready(self) -> bool:
        return True
