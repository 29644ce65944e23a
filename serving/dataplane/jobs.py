"""Asynchronous jobs: the board (state and ordered event log, kept in the shared store) and the
runner (the generation, reported step by step, then the signed webhook).

Without Redis the ingress replica that accepted a job runs it. With Redis the job is queued and
the worker of any ingress replica runs it (serving/dataplane/job_queue.py), so a job outlives the
replica that accepted it. Any replica answers `GET /v1/jobs/{id}` and streams its events from the
store. A job stops the one way everything stops (see serving/dataplane/stages.py): its task is
cancelled, here or, through the board, by a DELETE that reached another replica, which the next
step report notices. A replica that shuts down leaves its queued jobs to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from serving.dataplane.codecs import png_data_url
from serving.dataplane.request import RequestContext
from serving.dataplane.stages import StepProgress
from serving.dataplane.webhooks import check_webhook_url
from serving.errors import (
    ErrorDetail,
    NotFound,
    QueueFull,
    StageLost,
    StoreUnavailable,
    as_serving_error,
)

if TYPE_CHECKING:
    from serving.dataplane.checkpoints import JobCheckpoints
    from serving.dataplane.job_queue import QueuedJob, RedisJobQueue
    from serving.dataplane.redis_store import Attempt
    from serving.dataplane.service import DataPlane, GenerationResult, PreparedRequest
    from serving.dataplane.store import Store
    from serving.dataplane.webhooks import WebhookSender

logger = logging.getLogger(__name__)
QUEUE_WATCH_S = 2.0


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobEventKind(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    RESULT = "result"
    ERROR = "error"
    CANCELLED = "cancelled"


FINAL_EVENT = {
    JobStatus.SUCCEEDED: JobEventKind.RESULT,
    JobStatus.FAILED: JobEventKind.ERROR,
    JobStatus.CANCELLED: JobEventKind.CANCELLED,
}


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log; `index` doubles as the SSE event id."""

    index: int
    kind: JobEventKind
    data: dict[str, Any]


class JobProgress(BaseModel):
    steps_done: int
    steps_total: int
    fraction: float

    @classmethod
    def of(cls, steps_done: int, steps_total: int) -> JobProgress:
        fraction = round(steps_done / steps_total, 4) if steps_total else 0.0
        return cls(steps_done=steps_done, steps_total=steps_total, fraction=fraction)


class JobImage(BaseModel):
    url: str
    digest: str
    seed: int
    media_type: str


class JobResult(BaseModel):
    images: list[JobImage]
    cached: bool
    timings_ms: dict[str, float]
    warnings: list[str]


class JobView(BaseModel):
    """What `GET /v1/jobs/{id}` answers, and the data of a job's final event."""

    id: str
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled")
    progress: JobProgress
    parameters: dict[str, Any]
    result: JobResult | None
    error: ErrorDetail | None
    webhook: dict[str, Any] | None = Field(description="how the webhook delivery went")
    created_at: float
    updated_at: float


@dataclass
class Job:
    id: str
    parameters: dict[str, Any]
    webhook_url: str | None
    status: JobStatus = JobStatus.QUEUED
    steps_done: int = 0
    steps_total: int = 0
    result: JobResult | None = None
    error: ErrorDetail | None = None
    webhook: dict[str, Any] | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    events: list[JobEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def view(self) -> JobView:
        return JobView(
            id=self.id,
            status=self.status,
            progress=JobProgress.of(self.steps_done, self.steps_total),
            parameters=self.parameters,
            result=self.result,
            error=self.error,
            webhook=self.webhook,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class JobBoard:
    """Bounded: at most `max_jobs`; finished jobs are forgotten after `ttl_s`, or earlier
    (oldest first) when room is needed. Running jobs are never evicted. Plain asyncio."""

    def __init__(self, max_jobs: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._max_jobs = max_jobs
        self._ttl_s = ttl_s
        self._clock = clock

    def create(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> JobView:
        self._expire()
        if len(self._jobs) >= self._max_jobs:
            raise QueueFull(f"{len(self._jobs)} jobs are queued or running; retry later")
        now = self._clock()
        job = Job(job_id, parameters, webhook_url, steps_total=steps_total)
        job.created_at = job.updated_at = now
        self._jobs[job_id] = job
        self._append(job, JobEventKind.STATUS, {"status": job.status.value})
        return job.view()

    def get(self, job_id: str) -> JobView | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.view()

    async def report(
        self, job_id: str, kind: JobEventKind, data: dict[str, Any], advance: int = 1
    ) -> bool:
        """Record progress or a status change; True when the job should stop (cancelled)."""
        job = self._jobs.get(job_id)
        if job is None or job.status.finished:
            return True
        if kind is JobEventKind.PROGRESS:
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.RUNNING
                self._append(job, JobEventKind.STATUS, {"status": job.status.value})
            job.steps_done += advance
            data = {**data, "steps_done": job.steps_done, "steps_total": job.steps_total}
            if "preview" in data:
                self._drop_older_previews(job)
        self._append(job, kind, data)
        await _notify(job)
        return job.cancel_requested

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: JobResult | None = None,
        error: ErrorDetail | None = None,
    ) -> JobView | None:
        job = self._jobs.get(job_id)
        if job is None or job.status.finished:
            return None if job is None else job.view()
        job.status, job.result, job.error = status, result, error
        if status is JobStatus.SUCCEEDED:
            job.steps_done = job.steps_total
        job.updated_at = self._clock()
        final = job.view()
        data = final.model_dump(mode="json")  # the final view, exactly
        job.events.append(JobEvent(len(job.events), FINAL_EVENT[status], data))
        await _notify(job)
        return final

    def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.webhook = delivery

    def request_cancel(self, job_id: str) -> JobView | None:
        """Ask the running job to stop; it ends as `cancelled` at its next step."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if not job.status.finished:
            job.cancel_requested = True
        return job.view()

    async def events(
        self, job_id: str, after: int = -1, heartbeat_s: float = 15.0
    ) -> AsyncGenerator[JobEvent | None, None]:
        """The job's events after index `after`, live until the job finishes; None every
        `heartbeat_s` of silence (so proxies keep the stream open)."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        position = after + 1
        while True:
            while position < len(job.events):
                yield job.events[position]
                position += 1
            if job.status.finished:
                return
            grown = functools.partial(_has_more_than, job, len(job.events))
            async with job.changed:
                try:
                    await asyncio.wait_for(job.changed.wait_for(grown), heartbeat_s)
                    silent = False
                except TimeoutError:
                    silent = True
            if silent:  # yielded outside the lock: a slow reader must not block reporters
                yield None

    def _append(self, job: Job, kind: JobEventKind, data: dict[str, Any]) -> None:
        job.updated_at = self._clock()
        job.events.append(JobEvent(len(job.events), kind, data))

    def _drop_older_previews(self, job: Job) -> None:
        """Only the latest preview is kept for late subscribers: the log stays small."""
        for position in range(len(job.events) - 1, -1, -1):
            event = job.events[position]
            if event.kind is JobEventKind.PROGRESS and "preview" in event.data:
                data = {k: v for k, v in event.data.items() if k != "preview"}
                job.events[position] = JobEvent(event.index, event.kind, data)
                return

    def _expire(self) -> None:
        now = self._clock()
        for job_id, job in list(self._jobs.items()):
            if job.status.finished and now - job.updated_at > self._ttl_s:
                del self._jobs[job_id]
        if len(self._jobs) >= self._max_jobs:  # make room: the oldest finished jobs go
            for job_id, job in list(self._jobs.items()):
                if len(self._jobs) < self._max_jobs:
                    break
                if job.status.finished:
                    del self._jobs[job_id]


def _has_more_than(job: Job, count: int) -> bool:
    return len(job.events) > count


async def _notify(job: Job) -> None:
    async with job.changed:
        job.changed.notify_all()


class JobCancelled(Exception):
    """The board says the job was cancelled (a DELETE that reached another replica)."""


class JobRunner:
    """Runs jobs: DataPlane.run with a progress sink that reports every denoising step to the
    board, then the signed webhook. Without a queue, a job runs in the replica that accepted
    it; with one (Redis), this replica's worker runs whichever queued jobs it takes."""

    def __init__(
        self,
        data_plane: DataPlane,
        store: Store,
        webhooks: WebhookSender | None,
        queue: RedisJobQueue | None = None,
    ) -> None:
        self._data_plane = data_plane
        self._store = store
        self._webhooks = webhooks
        self._queue = queue
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled_here: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()

    @property
    def webhooks_enabled(self) -> bool:
        return self._webhooks is not None

    async def check_webhook_url(self, url: str) -> None:
        """A 422 for a webhook URL this server may not call (webhooks off, or an internal
        address the operator has not allowed)."""
        check_webhook_url(url, self.webhooks_enabled)
        if self._webhooks is not None:
            await self._webhooks.targets.check(url)

    async def submit(
        self, prepared: PreparedRequest, *, preview: bool, webhook_url: str | None
    ) -> JobView:
        """The job, queued: in this replica's background, or in the durable queue."""
        job_id = uuid.uuid4().hex
        request = prepared.request
        view = await self._store.create_job(
            job_id,
            request.model_dump(),
            prepared.denoising_steps * request.num_images,
            webhook_url,
        )
        if self._queue is None:
            self._start(job_id, self._run(job_id, prepared, preview, webhook_url))
        else:
            work = {"prepared": prepared.to_json(), "preview": preview, "webhook_url": webhook_url}
            await self._queue.put(job_id, work)
        return view

    async def cancel(self, job_id: str) -> JobView | None:
        view = await self._store.cancel_job(job_id)
        task = self._running.get(job_id)
        if task is not None:  # running here: stop now rather than at its next step report
            self._cancelled_here.add(job_id)
            task.cancel()
        return view

    async def start(self) -> None:
        """With a queue: start this replica's worker (the HTTP app's startup calls this)."""
        if self._queue is not None and self._worker is None:
            self._worker = asyncio.create_task(self._work(self._queue))
            self._watcher = asyncio.create_task(self._watch(self._queue))

    async def stop(self) -> None:
        """Shutting down: with a queue, the jobs running here stop without an ending; their
        leases lapse and another replica runs them again."""
        if self._worker is not None:
            for task in (self._worker, self._watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._worker = self._watcher = None
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _start(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._running[job_id] = task
        task.add_done_callback(functools.partial(self._forget, job_id))

    def _forget(self, job_id: str, _: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._cancelled_here.discard(job_id)
        self._finished.set()

    async def _work(self, queue: RedisJobQueue) -> None:
        """Take queued jobs while this replica has room for them (SD_JOB_WORKERS)."""
        while True:
            room = self._data_plane.settings.job_workers - len(self._running)
            if room <= 0:
                self._finished.clear()
                await self._finished.wait()
                continue
            try:
                # A replica starting up takes no job before its stages answer (a job taken over
                # at start would fail on a stage still loading).
                if not await self._data_plane.ready():
                    await asyncio.sleep(1.0)
                    continue
                taken = await queue.take(room, block_s=1.0)
            except Exception:  # Redis away: say so, and try again
                logger.exception("taking queued jobs failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            for job in taken:
                if job.job_id not in self._running:  # a reclaim of its own running job
                    self._start(job.job_id, self._execute(queue, job))

    async def _watch(self, queue: RedisJobQueue) -> None:
        """The queue's gauges, every QUEUE_WATCH_S, busy or not (a full worker still reports
        how long jobs wait)."""
        metrics = self._data_plane.metrics
        while True:
            try:
                metrics.jobs_queued.set(await queue.length())
                metrics.jobs_oldest_waiting.set(await queue.oldest_waiting_s())
            except Exception:
                logger.warning("reading the job queue's length failed", exc_info=True)
            await asyncio.sleep(QUEUE_WATCH_S)

    async def _execute(self, queue: RedisJobQueue, job: QueuedJob) -> None:
        view = await self._store.get_job(job.job_id)
        if view is None or view.status.finished:  # expired, or an earlier attempt finished it
            await queue.done(job.entry_id)
            return
        renewing = asyncio.create_task(self._renew(queue, job.entry_id))
        try:
            # A stage replica lost mid-job (StageLost) costs an attempt, not the job: the next
            # one resumes from the checkpoints on another replica, here and now.
            while not await self._attempt(queue, job):
                logger.warning("job %s lost a stage replica; resuming it", job.job_id)
                await self._until_ready()
        except Exception:  # Redis away mid-job: the entry stays pending, its lease lapses, and
            # a worker takes it over (from its checkpoints) once Redis answers again
            logger.exception("job %s stopped; it stays queued for another attempt", job.job_id)
        finally:
            renewing.cancel()

    async def _until_ready(self, timeout_s: float = 120.0) -> None:
        """Until the stages answer again (Ray Serve is replacing the lost replica), so the next
        attempt is not lost to the same dead replica at once."""
        await asyncio.sleep(2.0)  # past the readiness answer cached before the loss
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not await self._data_plane.ready():
            await asyncio.sleep(1.0)

    async def _attempt(self, queue: RedisJobQueue, job: QueuedJob) -> bool:
        """One run of the job; False when a stage replica it used stopped (run it again)."""
        attempt = await queue.store.begin_attempt(job.job_id)
        webhook_url = job.work["webhook_url"]
        limit = self._data_plane.settings.job_max_attempts
        if attempt.cancel_requested:
            final = await self._store.finish_job(job.job_id, JobStatus.CANCELLED)
            await queue.done(job.entry_id)
            await self._deliver(job.job_id, webhook_url, final)
            return True
        from serving.dataplane.service import PreparedRequest  # service → store → jobs

        prepared = PreparedRequest.from_json(job.work["prepared"])
        checkpoints, stalled = await self._checkpoints(queue, job.job_id, prepared, attempt)
        if stalled >= limit:
            reason = (
                f"gave up after {limit} attempts that got no further: the replicas running it "
                "stopped"
            )
            error = ErrorDetail(code="unavailable", message=reason)
            final = await self._store.finish_job(job.job_id, JobStatus.FAILED, error=error)
            await queue.bury(job, reason)
            self._data_plane.metrics.jobs_dead_lettered.inc()
            await self._deliver(job.job_id, webhook_url, final)
            return True
        try:
            await self._run(job.job_id, prepared, job.work["preview"], webhook_url, checkpoints)
        except StageLost:
            return False
        await queue.done(job.entry_id)
        return True

    async def _checkpoints(
        self, queue: RedisJobQueue, job_id: str, prepared: PreparedRequest, attempt: Attempt
    ) -> tuple[JobCheckpoints | None, int]:
        """The job's checkpoints for the weights served now (None when its model no longer
        is: the run fails naming it), and how many attempts in a row were lost without getting
        past the previous one's checkpoints: a job that crashes its replica every time fails
        after SD_JOB_MAX_ATTEMPTS of those, one that moves on between faults never does. A
        taken-over job counts what it resumes and redoes."""
        try:
            model = self._data_plane.model(prepared.request.model)
        except NotFound:
            return None, 0
        checkpoints = queue.store.checkpoints(job_id, model.version)
        if attempt.number == 1:
            return checkpoints, 0
        metrics = self._data_plane.metrics
        metrics.jobs_taken_over.inc()
        saved = await checkpoints.load()
        if saved:
            metrics.jobs_resumed.inc()
        resumed_steps = sum(checkpoint.step for checkpoint in saved.values())
        redone = attempt.steps_before - resumed_steps
        if redone > 0:  # Ray's counters refuse 0
            metrics.job_steps_redone.inc(redone)
        return checkpoints, await queue.store.record_resume(job_id, resumed_steps)

    @staticmethod
    async def _renew(queue: RedisJobQueue, entry_id: str) -> None:
        while True:
            await asyncio.sleep(queue.lease_s / 3)
            try:
                await queue.renew(entry_id)
            except Exception:
                logger.exception("renewing the lease of queue entry %s failed", entry_id)

    async def _run(
        self,
        job_id: str,
        prepared: PreparedRequest,
        preview: bool,
        webhook_url: str | None,
        checkpoints: JobCheckpoints | None = None,
    ) -> None:
        reached: dict[int, int] = {}  # image index → its last step reported

        async def report(step: StepProgress) -> None:
            data: dict[str, Any] = {
                "image_index": step.image_index,
                "step": step.step,
                "total": step.total,
            }
            before = reached.get(step.image_index, 0)
            if step.step > before + 1:  # the image's first step after its checkpoint
                data["resumed_from"] = step.step - 1
            reached[step.image_index] = step.step
            if step.preview is not None:
                data["preview"] = png_data_url(step.preview)
            advance = max(1, step.step - before)
            if await self._store.report_job(job_id, JobEventKind.PROGRESS, data, advance):
                raise JobCancelled

        try:
            result = await self._data_plane.run(
                prepared,
                RequestContext(),
                progress=report,
                preview=preview,
                checkpoints=checkpoints,
            )
            final = await self._store.finish_job(
                job_id, JobStatus.SUCCEEDED, result=self._job_result(result)
            )
        except asyncio.CancelledError:
            if self._queue is not None and job_id not in self._cancelled_here:
                raise  # this replica is stopping: the job stays queued for another
            final = await self._store.finish_job(job_id, JobStatus.CANCELLED)
        except JobCancelled:
            final = await self._store.finish_job(job_id, JobStatus.CANCELLED)
        except (StageLost, StoreUnavailable) as lost:
            if self._queue is not None:
                raise  # a durable job runs again from its checkpoints (see _execute)
            final = await self._store.finish_job(job_id, JobStatus.FAILED, error=lost.to_detail())
        except Exception as error:
            serving_error = as_serving_error(error)
            if serving_error is None:
                logger.exception("job %s failed", job_id)
                details = ErrorDetail(code="internal", message="generation failed; see server logs")
            else:
                details = serving_error.to_detail()
            final = await self._store.finish_job(job_id, JobStatus.FAILED, error=details)
        await self._deliver(job_id, webhook_url, final)

    async def _deliver(self, job_id: str, webhook_url: str | None, final: JobView | None) -> None:
        if webhook_url is not None and final is not None and self._webhooks is not None:
            with contextlib.suppress(asyncio.CancelledError):
                delivery = await self._webhooks.deliver(webhook_url, final.model_dump(mode="json"))
                await self._store.record_webhook(job_id, delivery)

    def _job_result(self, result: GenerationResult) -> JobResult:
        fmt = result.request.output_format
        return JobResult(
            images=[
                JobImage(
                    url=self._data_plane.image_url(image.digest, fmt),
                    digest=image.digest,
                    seed=image.seed,
                    media_type=result.media_type,
                )
                for image in result.images
            ],
            cached=result.cached,
            timings_ms={name: round(value, 2) for name, value in result.timings_ms.items()},
            warnings=result.warnings,
        )
