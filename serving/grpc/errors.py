"""ServingError → gRPC status: the one table of status codes for the gRPC transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from serving.client.v2 import FIELD_METADATA, RETRY_AFTER_METADATA
from serving.errors import RETRY_AFTER_S, RateLimited, Reason, ServingError

GRPC_STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own size limit
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.QUEUE_FULL: grpc.StatusCode.UNAVAILABLE,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


class CallContext(Protocol):
    """What the methods use of a call's context: Ray's gRPC context and grpc.aio's both fit."""

    def invocation_metadata(self) -> Any: ...  # (key, value) pairs
    def peer(self) -> str: ...
    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None: ...


def retry_after_s(error: ServingError) -> int | None:
    """Seconds a client should wait before retrying, for the reasons where waiting helps."""
    if isinstance(error, RateLimited):
        return error.retry_after_s
    return RETRY_AFTER_S.get(error.reason)


def metadata_value(text: str) -> str:
    """gRPC metadata values are printable ASCII (anything else fails the whole call): other
    characters escaped as Python writes them, so a field named in any script stays readable."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode() for c in text)


def reject(context: CallContext, error: ServingError) -> None:
    """Answer the call with the error's status, message, and as trailing metadata the field it
    names and how long to wait before retrying."""
    context.set_code(GRPC_STATUS[error.reason])
    context.set_details(error.message)
    trailing = []
    retry = retry_after_s(error)
    if retry is not None:
        trailing.append((RETRY_AFTER_METADATA, str(retry)))
    if error.field is not None:
        trailing.append((FIELD_METADATA, metadata_value(error.field)))
    if trailing:
        context.set_trailing_metadata(trailing)
