"""Every error reason has a status on each transport, and client mistakes are never server
errors."""

from __future__ import annotations

import grpc

from serving.errors import Reason
from serving.grpc.errors import GRPC_STATUS
from serving.http.errors import HTTP_STATUS

CLIENT_MISTAKES = (
    Reason.MALFORMED_REQUEST,
    Reason.INVALID_ARGUMENT,
    Reason.NOT_FOUND,
    Reason.PAYLOAD_TOO_LARGE,
    Reason.UNAUTHENTICATED,
)


def test_every_reason_has_a_status_on_both_transports() -> None:
    assert set(GRPC_STATUS) == set(Reason) == set(HTTP_STATUS)


def test_client_mistakes_are_not_server_errors() -> None:
    for reason in CLIENT_MISTAKES:
        assert GRPC_STATUS[reason] not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        assert 400 <= HTTP_STATUS[reason] < 500
    assert GRPC_STATUS[Reason.QUEUE_FULL] == grpc.StatusCode.UNAVAILABLE
    assert GRPC_STATUS[Reason.RATE_LIMITED] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert GRPC_STATUS[Reason.DEADLINE_EXCEEDED] == grpc.StatusCode.DEADLINE_EXCEEDED
