"""ServingError → HTTP: the one table of status codes, and the handler FastAPI uses."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.errors import (
    RETRY_AFTER_S,
    InvalidArgument,
    MalformedRequest,
    RateLimited,
    Reason,
    ServingError,
    as_serving_error,
)

HTTP_STATUS: dict[Reason, int] = {
    Reason.MALFORMED_REQUEST: 400,
    Reason.INVALID_ARGUMENT: 422,
    Reason.PAYLOAD_TOO_LARGE: 413,
    Reason.UNAUTHENTICATED: 401,
    Reason.NOT_FOUND: 404,
    Reason.QUEUE_FULL: 503,
    Reason.RATE_LIMITED: 429,
    Reason.NOT_READY: 503,
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
    Reason.DEADLINE_EXCEEDED: "server_error",
    Reason.INTERNAL: "server_error",
}
OPENAI_PATH_PREFIX = "/v1/images/generations"
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
    elif path.startswith(OPENAI_PATH_PREFIX):
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


ErrorRecorder = Callable[[ServingError], None]
# Another library's exceptions (kserve's, inside its v2 endpoints) as ours, or None.
ErrorTranslator = Callable[[BaseException], ServingError | None]


def install_error_handlers(
    app: FastAPI,
    record: ErrorRecorder | None = None,
    foreign: tuple[type[Exception], ...] = (),
    translate: ErrorTranslator | None = None,
) -> None:
    def respond(request: Request, error: ServingError) -> JSONResponse:
        if record is not None:
            record(error)
        return error_response(error, request.url.path)

    async def on_serving_error(request: Request, error: Exception) -> JSONResponse:
        serving_error = as_serving_error(error)
        if serving_error is None and translate is not None:
            serving_error = translate(error)
        if serving_error is None:
            raise error
        return respond(request, serving_error)

    async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return respond(request, MalformedRequest(f"malformed JSON: {first.get('msg')}"))
        field = ".".join(location) or "body"
        return respond(request, InvalidArgument(field, str(first.get("msg"))))

    app.add_exception_handler(ServingError, on_serving_error)
    for error_type in foreign:
        app.add_exception_handler(error_type, on_serving_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
