"""Async jobs over HTTP: `POST /v1/jobs` → 202, `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}`,
and `GET /v1/jobs/{id}/events` as server-sent events (one per denoising step, then the result)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, StreamingResponse

from serving.dataplane.jobs import JobEvent, JobView
from serving.errors import InvalidArgument, NotFound
from serving.http.dependencies import ContextDep, ServicesDep
from serving.http.models import ERRORS, JobRequest, JobResponse

router = APIRouter(tags=["jobs"])


def links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"}


def job_response(view: JobView) -> JobResponse:
    return JobResponse(**view.model_dump(), links=links(view.id))


def sse_frame(event: JobEvent | None) -> str:
    if event is None:
        return ": keep-alive\n\n"
    return f"id: {event.index}\nevent: {event.kind}\ndata: {json.dumps(event.data)}\n\n"


def unknown_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}: unknown, or finished and forgotten")


@router.post("/v1/jobs", status_code=202, responses={202: {"model": JobResponse}, **ERRORS})
async def submit(body: JobRequest, services: ServicesDep, context: ContextDep) -> JSONResponse:
    if body.webhook_url is not None:
        await services.jobs.check_webhook_url(body.webhook_url)
    # Checked now (a prompt too long fails with 422 here, not later in the job).
    params = await services.data_plane.with_stored_pictures(body.params())
    prepared = services.data_plane.prepare(params, context)
    view = await services.jobs.submit(prepared, preview=body.preview, webhook_url=body.webhook_url)
    return JSONResponse(
        job_response(view).model_dump(mode="json"),
        status_code=202,
        headers={"Location": links(view.id)["self"]},
    )


@router.get("/v1/jobs/{job_id}", responses=ERRORS)
async def status(job_id: str, services: ServicesDep) -> JobResponse:
    view = await services.data_plane.store.get_job(job_id)
    if view is None:
        raise unknown_job(job_id)
    return job_response(view)


@router.delete("/v1/jobs/{job_id}", responses=ERRORS)
async def cancel(job_id: str, services: ServicesDep) -> JobResponse:
    view = await services.jobs.cancel(job_id)
    if view is None:
        raise unknown_job(job_id)
    return job_response(view)


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`status`, one `progress` per denoising step (with a `preview` "
            "data URL when the job asked for one), then `result`, `error` or `cancelled`",
        },
        **ERRORS,
    },
)
async def events(
    job_id: str,
    services: ServicesDep,
    last_event_id: str | None = Header(None, description="resume after this event id"),
) -> StreamingResponse:
    store = services.data_plane.store
    if await store.get_job(job_id) is None:
        raise unknown_job(job_id)
    after = resume_after(last_event_id)

    async def frames() -> AsyncIterator[str]:
        # Closed when the client goes away or the job ends: the store stops streaming.
        async with aclosing(store.job_events(job_id, after)) as stream:
            async for event in stream:
                yield sse_frame(event)

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def resume_after(value: str | None) -> int:
    """Where a reconnecting EventSource resumes (its Last-Event-ID header)."""
    if value is None:
        return -1
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument("Last-Event-ID", f"must be an event id (got {value!r})") from None
