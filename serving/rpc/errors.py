"""ServingError → gRPC status: the one table of status codes for the gRPC transport."""

from __future__ import annotations

import grpc

from serving.errors import RETRY_AFTER_S, RateLimited, Reason, ServingError

FIELD_METADATA = "sd-field"  # trailing metadata naming the bad field, when there is one

GRPC_STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own size limit
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.QUEUE_FULL: grpc.StatusCode.UNAVAILABLE,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Reason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


def retry_after_s(error: ServingError) -> int | None:
    """Seconds a client should wait before retrying, for the reasons where waiting helps."""
    if isinstance(error, RateLimited):
        return error.retry_after_s
    return RETRY_AFTER_S.get(error.reason)
