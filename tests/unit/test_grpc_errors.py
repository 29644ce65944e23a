"""Every error reason has a gRPC status, and client mistakes are never INTERNAL."""

from __future__ import annotations

import grpc

from serving.errors import Reason
from serving.rpc.errors import GRPC_STATUS


def test_every_reason_has_a_status() -> None:
    assert set(GRPC_STATUS) == set(Reason)


def test_client_mistakes_are_not_server_errors() -> None:
    for reason in (Reason.MALFORMED_REQUEST, Reason.INVALID_ARGUMENT, Reason.NOT_FOUND):
        assert GRPC_STATUS[reason] not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert GRPC_STATUS[Reason.QUEUE_FULL] == grpc.StatusCode.UNAVAILABLE
    assert GRPC_STATUS[Reason.RATE_LIMITED] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert GRPC_STATUS[Reason.DEADLINE_EXCEEDED] == grpc.StatusCode.DEADLINE_EXCEEDED
