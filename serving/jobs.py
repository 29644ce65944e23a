"""Asynchronous jobs: their state and ordered event log, shared by every ingress replica.

The ingress replica that accepted a job runs it and reports here; any replica answers
`GET /v1/jobs/{id}` and streams `/events` from here. Plain asyncio, no Ray inside."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from serving.errors import QueueFull


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log; `index` doubles as the SSE event id."""

    index: int
    kind: str  # "status", "progress", "result", "error", "cancelled"
    data: dict[str, Any]


@dataclass
class Job:
    id: str
    parameters: dict[str, Any]
    webhook_url: str | None
    status: JobStatus = JobStatus.QUEUED
    steps_done: int = 0
    steps_total: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    webhook: dict[str, Any] | None = None
    cancel_requested: bool = False
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    events: list[JobEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def view(self) -> dict[str, Any]:
        """What GET /v1/jobs/{id} answers."""
        total = self.steps_total
        return {
            "id": self.id,
            "status": self.status.value,
            "progress": {
                "steps_done": self.steps_done,
                "steps_total": total,
                "fraction": round(self.steps_done / total, 4) if total else 0.0,
            },
            "parameters": self.parameters,
            "result": self.result,
            "error": self.error,
            "webhook": self.webhook,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class JobBoard:
    """Bounded: at most `max_jobs`; finished jobs are forgotten after `ttl_s`, or earlier
    (oldest first) when room is needed. Running jobs are never evicted."""

    def __init__(self, max_jobs: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._max_jobs = max_jobs
        self._ttl_s = ttl_s
        self._clock = clock

    def create(
        self, job_id: str, parameters: dict[str, Any], steps_total: int, webhook_url: str | None
    ) -> dict[str, Any]:
        self._expire()
        if len(self._jobs) >= self._max_jobs:
            raise QueueFull(f"{len(self._jobs)} jobs are queued or running; retry later")
        now = self._clock()
        job = Job(job_id, parameters, webhook_url, steps_total=steps_total)
        job.created_at = job.updated_at = now
        self._jobs[job_id] = job
        self._append(job, "status", {"status": job.status.value})
        return job.view()

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.view()

    async def report(self, job_id: str, kind: str, data: dict[str, Any]) -> bool:
        """Record progress or a status change; True when the job should stop (cancelled)."""
        job = self._jobs.get(job_id)
        if job is None or job.status.finished:
            return True
        if kind == "progress":
            if job.status is JobStatus.QUEUED:
                job.status = JobStatus.RUNNING
                self._append(job, "status", {"status": job.status.value})
            job.steps_done += 1
            data = {**data, "steps_done": job.steps_done, "steps_total": job.steps_total}
            if "preview" in data:
                self._drop_older_previews(job)
        self._append(job, kind, data)
        async with job.changed:
            job.changed.notify_all()
        return job.cancel_requested

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None or job.status.finished:
            return None if job is None else job.view()
        job.status, job.result, job.error = status, result, error
        if status is JobStatus.SUCCEEDED:
            job.steps_done = job.steps_total
        kind = {JobStatus.SUCCEEDED: "result", JobStatus.FAILED: "error"}.get(status, "cancelled")
        job.updated_at = self._clock()
        job.events.append(JobEvent(len(job.events), kind, job.view()))  # the final view, exactly
        async with job.changed:
            job.changed.notify_all()
        return job.view()

    def record_webhook(self, job_id: str, delivery: dict[str, Any]) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.webhook = delivery

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask the running job to stop; it ends as `cancelled` at its next step."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if not job.status.finished:
            job.cancel_requested = True
        return job.view()

    async def events(
        self, job_id: str, after: int = -1, heartbeat_s: float = 15.0
    ) -> AsyncIterator[JobEvent | None]:
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

    def _append(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        job.updated_at = self._clock()
        job.events.append(JobEvent(len(job.events), kind, data))

    def _drop_older_previews(self, job: Job) -> None:
        """Only the latest preview is kept for late subscribers: the log stays small."""
        for position in range(len(job.events) - 1, -1, -1):
            event = job.events[position]
            if event.kind == "progress" and "preview" in event.data:
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
