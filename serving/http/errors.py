"""ServingError → HTTP: the one table of status codes, each protocol's error shape, and the
handlers that turn every exception a route can raise (ours, FastAPI's validation errors,
Starlette's HTTP errors; kserve's in serving/http/kserve_v2.py) into one of our errors, counted
once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.errors import (
    RETRY_AFTER_S,
    InvalidArgument,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Reason,
    ServingError,
    as_serving_error,
)
from serving.metrics import IngressMetrics

HTTP_STATUS: dict[Reason, int] = {
    Reason.MALFORMED_REQUEST: 400,
    Reason.INVALID_ARGUMENT: 422,
    Reason.PAYLOAD_TOO_LARGE: 413,
    Reason.UNAUTHENTICATED: 401,
    Reason.NOT_FOUND: 404,
    Reason.QUEUE_FULL: 503,
    Reason.RATE_LIMITED: 429,
    Reason.NOT_READY: 503,
    Reason.UNAVAILABLE: 503,
    Reason.DEADLINE_EXCEEDED: 504,
    Reason.INTERNAL: 500,
}

# OpenAI's error `type` per reason, so the official SDKs raise their usual exceptions.
OPENAI_ERROR_TYPE: dict[Reason, str] = {
    Reason.UNAUTHENTICATED: "authentication_error",
    Reason.NOT_FOUND: "invalid_request_error",
    Reason.QUEUE_FULL: "server_error",
    Reason.RATE_LIMITED: "rate_limit_error",
    Reason.NOT_READY: "server_error",
    Reason.UNAVAILABLE: "server_error",
    Reason.DEADLINE_EXCEEDED: "server_error",
    Reason.INTERNAL: "server_error",
}
OPENAI_PATHS = ("/v1/images/generations", "/v1/images/edits")
V2_PATH_PREFIX = "/v2/"


def error_response(error: ServingError, path: str = "") -> JSONResponse:
    """The error in the shape of the protocol the path belongs to (v2's, OpenAI's, or ours)."""
    headers = {}
    if error.reason in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[error.reason])
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after_s)
    if error.reason is Reason.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="sd-serving"'
    body: dict[str, object]
    if path.startswith(V2_PATH_PREFIX):  # the v2 protocol's `error` is a string
        body = {**error.to_dict(), "error": error.message}
    elif path.startswith(OPENAI_PATHS):
        body = {
            "error": {
                "message": error.message,
                "type": OPENAI_ERROR_TYPE.get(error.reason, "invalid_request_error"),
                "param": error.field,
                "code": error.reason.value,
            }
        }
    else:
        body = {"error": error.to_dict()}
    return JSONResponse(body, status_code=HTTP_STATUS[error.reason], headers=headers)


class ErrorResponder:
    """Counts the refusal, then answers it in the protocol's shape."""

    def __init__(self, metrics: IngressMetrics | None) -> None:
        self._metrics = metrics

    def __call__(self, error: ServingError, path: str) -> JSONResponse:
        if self._metrics is not None:
            self._metrics.record_rejection(error)
        return error_response(error, path)


def field_path(location: Sequence[int | str]) -> str:
    """A validation error's location as clients write it: `instances[1].steps`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def validation_error(error: RequestValidationError) -> ServingError:
    """The first problem FastAPI found in a request, in our words (the field named)."""
    first = error.errors()[0]
    kind = first.get("type")
    location = [part for part in first.get("loc", ()) if part != "body"]
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", first.get("msg"))
        return MalformedRequest(f"malformed JSON: {detail}")
    if first.get("loc", ())[:1] == ("body",) and not location:
        if kind == "missing":
            return MalformedRequest("request body is empty; send a JSON object")
        return MalformedRequest(
            "request body must be a JSON object (sent as Content-Type: application/json)"
        )
    field = field_path(location) or "body"
    if kind == "extra_forbidden":
        return InvalidArgument(field, "unknown field")
    if kind == "missing":
        return InvalidArgument(field, "is required")
    return InvalidArgument(field, str(first.get("msg")))


def allowed_methods(document: dict[str, Any], path: str) -> str:
    """The methods of the most specific path template in the OpenAPI document matching `path`
    (the most literal characters: /v1/images/generations over /v1/images/{name}), for a 405's
    `Allow`. Starlette names the first route whose pattern matches, GET for PUT
    /v1/images/generations."""
    best, methods = -1, set()
    for template, operations in document.get("paths", {}).items():
        pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
        if not re.fullmatch(pattern, path):
            continue
        literal = len(re.sub(r"\{[^}]+\}", "", template))
        found = {method.upper() for method in operations if method != "parameters"}
        if literal > best:
            best, methods = literal, found
        elif literal == best:
            methods |= found
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, respond: ErrorResponder) -> None:
    async def on_serving_error(request: Request, error: Exception) -> JSONResponse:
        serving_error = as_serving_error(error)
        if serving_error is None:
            raise error
        return respond(serving_error, request.url.path)

    async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return respond(validation_error(error), request.url.path)

    async def on_http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        mapped: ServingError
        if error.status_code == 413:  # a streamed body cut off at the limit
            mapped = PayloadTooLarge(str(error.detail))
        elif error.status_code == 404:
            mapped = NotFound(f"no route {request.method} {request.url.path}")
        elif error.status_code == 400:
            mapped = MalformedRequest(str(error.detail))
        else:
            headers = dict(error.headers or {})
            if error.status_code == 405:
                headers["Allow"] = allowed_methods(app.openapi(), request.url.path)
            return JSONResponse(
                {"error": {"code": "http_error", "message": str(error.detail)}},
                status_code=error.status_code,
                headers=headers,
            )
        return respond(mapped, request.url.path)

    app.add_exception_handler(ServingError, on_serving_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
