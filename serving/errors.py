"""Every error a client can see, defined once. Transports map `reason` to their status codes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import StrEnum

from pydantic import BaseModel


class Reason(StrEnum):
    MALFORMED_REQUEST = "malformed_request"
    INVALID_ARGUMENT = "invalid_argument"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not_found"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    NOT_READY = "not_ready"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


# How long a client should wait before retrying, where waiting helps (HTTP Retry-After,
# gRPC `retry-after` trailing metadata); rate limits compute their own.
RETRY_AFTER_S: dict[Reason, int] = {
    Reason.QUEUE_FULL: 2,
    Reason.NOT_READY: 5,
    Reason.UNAVAILABLE: 2,
}


class ErrorDetail(BaseModel):
    """An error as clients see it: `{"code", "message", "field"}`."""

    code: str
    message: str
    field: str | None = None


class ServingError(Exception):
    """Base of every error the service reports to clients."""

    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the keyword-only field when Ray pickles the error between replicas.
        return (_rebuild, (type(self), self.message, self.field))

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.reason.value, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body

    def to_detail(self) -> ErrorDetail:
        return ErrorDetail(code=self.reason.value, message=self.message, field=self.field)


def _rebuild(cls: type[ServingError], message: str, field: str | None) -> ServingError:
    return cls(message, field=field)


class MalformedRequest(ServingError):
    """The body could not be parsed at all (bad JSON, wrong content type)."""

    reason = Reason.MALFORMED_REQUEST


class InvalidArgument(ServingError):
    """A field is present but out of its allowed range or of the wrong type."""

    reason = Reason.INVALID_ARGUMENT

    field: str

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)
        self.detail = detail

    def renamed(self, field: str) -> InvalidArgument:
        """The same complaint under the name a protocol's clients know the field by."""
        return InvalidArgument(field, self.detail)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.field, self.detail))


class PayloadTooLarge(ServingError):
    """The request body is over the server's limit (SD_MAX_REQUEST_BYTES)."""

    reason = Reason.PAYLOAD_TOO_LARGE


class Unauthenticated(ServingError):
    """No valid API key; the message never repeats what the client sent."""

    reason = Reason.UNAUTHENTICATED


class NotFound(ServingError):
    reason = Reason.NOT_FOUND


class QueueFull(ServingError):
    """The UNet's waiting room is full; the client should retry later."""

    reason = Reason.QUEUE_FULL


class RateLimited(ServingError):
    """The client's token bucket is empty; `retry_after_s` says when the next token comes."""

    reason = Reason.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServingError):
    reason = Reason.NOT_READY


class DeadlineExceeded(ServingError):
    reason = Reason.DEADLINE_EXCEEDED


class StoreUnavailable(ServingError):
    """The shared store (Redis) does not answer: the job operation cannot be done now."""

    reason = Reason.UNAVAILABLE


class StageLost(ServingError):
    """A stage's replica stopped while it held the request (it crashed, or was replaced) and
    the request could not be sent again without redoing denoising: the client should retry."""

    reason = Reason.UNAVAILABLE


@contextlib.contextmanager
def fields_renamed(rename: Callable[[str], str]) -> Iterator[None]:
    """Inside, an InvalidArgument names its field the way the protocol's clients know it:
    `with fields_renamed(lambda f: f"instances[0].{f}"): await data_plane.generate(...)`."""
    try:
        yield
    except InvalidArgument as error:
        raise error.renamed(rename(error.field)) from None


def as_serving_error(error: BaseException) -> ServingError | None:
    """The ServingError behind `error`, also when Ray wrapped it on its way between replicas."""
    if isinstance(error, ServingError):
        return error
    cause = getattr(error, "cause", None)
    if isinstance(cause, ServingError):
        return cause
    return None
