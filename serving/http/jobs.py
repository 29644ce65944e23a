"""Async jobs over HTTP: `POST /v1/jobs` → 202, `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}`,
and `GET /v1/jobs/{id}/events` as server-sent events (one per denoising step, then the result)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serving.errors import InvalidArgument, NotFound
from serving.http.bodies import json_body
from serving.http.schemas import ERRORS, JobView, job_request_schema, request_body
from serving.jobrunner import JobRunner
from serving.jobs import JobEvent
from serving.request import parse_params
from serving.service import GenerationService
from serving.webhooks import check_webhook_url

JOB_OPTIONS = ("webhook_url", "preview")


def links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"}


def sse_frame(event: JobEvent | None) -> str:
    if event is None:
        return ": keep-alive\n\n"
    return f"id: {event.index}\nevent: {event.kind}\ndata: {json.dumps(event.data)}\n\n"


def install_job_routes(
    app: FastAPI, service: GenerationService, runner: JobRunner, board: DeploymentHandle
) -> None:
    async def existing(job_id: str) -> dict[str, Any]:
        view: dict[str, Any] | None = await board.get_job.remote(job_id)
        if view is None:
            raise _unknown(job_id)
        return view

    @app.post(
        "/v1/jobs",
        status_code=202,
        openapi_extra=request_body(job_request_schema()),
        responses={202: {"model": JobView}, **ERRORS},
    )
    async def submit(request: Request) -> JSONResponse:
        body = await json_body(request)
        # parse_params below refuses a body that is not an object
        options = (
            {k: body.pop(k) for k in JOB_OPTIONS if k in body} if isinstance(body, dict) else {}
        )
        webhook_url = options.get("webhook_url")
        if webhook_url is not None:
            check_webhook_url(webhook_url, service.settings.webhook_secret is not None)
        preview = options.get("preview", False)
        if not isinstance(preview, bool):
            raise InvalidArgument("preview", f"must be true or false (got {preview!r})")
        params = parse_params(body)
        resolved = service.resolve(params)
        service.check_prompt(resolved)  # a prompt too long fails now, not in the job
        view = await runner.submit(
            resolved, determined=params.seed is not None, preview=preview, webhook_url=webhook_url
        )
        return JSONResponse(
            {**view, "links": links(view["id"])},
            status_code=202,
            headers={"Location": links(view["id"])["self"]},
        )

    @app.get("/v1/jobs/{job_id}", responses={200: {"model": JobView}, **ERRORS})
    async def status(job_id: str) -> dict[str, Any]:
        return {**(await existing(job_id)), "links": links(job_id)}

    @app.delete("/v1/jobs/{job_id}", responses={200: {"model": JobView}, **ERRORS})
    async def cancel(job_id: str) -> JSONResponse:
        view = await runner.cancel(job_id)
        if view is None:
            raise _unknown(job_id)
        return JSONResponse({**view, "links": links(job_id)}, status_code=200)

    @app.get(
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
    async def events(job_id: str, request: Request) -> StreamingResponse:
        await existing(job_id)
        after = _last_event_id(request.headers.get("last-event-id"))
        stream = board.options(stream=True).job_events.remote(job_id, after)
        assert isinstance(stream, DeploymentResponseGenerator)

        async def frames() -> AsyncIterator[str]:
            try:
                async for event in stream:
                    yield sse_frame(event)
            finally:  # the client went away, or the job ended
                stream.cancel()

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _unknown(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}: unknown, or finished and forgotten")


def _last_event_id(value: str | None) -> int:
    """Where a reconnecting EventSource resumes (its Last-Event-ID header)."""
    if value is None:
        return -1
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument("Last-Event-ID", f"must be an event id (got {value!r})") from None
