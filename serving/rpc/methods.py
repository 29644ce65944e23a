"""The v2 gRPC methods of the Ingress deployment: Ray Serve's gRPC proxy calls the ingress method
named like the RPC. Each one reuses kserve's generated servicer (same DataPlane as REST), after
API-key and rate-limit checks, and answers errors with their gRPC status code."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from google.protobuf.message import Message
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.servicer import InferenceServicer
from ray.serve.grpc_util import RayServegRPCContext

from serving.apikeys import is_authorized
from serving.errors import ServingError, Unauthenticated, as_serving_error
from serving.kserve_v2 import kserve_error
from serving.ratelimit import TokenBuckets, identity, rate_limited
from serving.rpc.errors import FIELD_METADATA, GRPC_STATUS, retry_after_s
from serving.rpc.protos import pb

logger = logging.getLogger(__name__)
ErrorRecorder = Callable[[ServingError], None]


class _Metadatum(NamedTuple):
    key: str
    value: str


class _KServeContext:
    """Ray's context as kserve's servicer reads it: metadata as objects with key and value
    (Ray hands over plain tuples)."""

    def __init__(self, context: RayServegRPCContext) -> None:
        self._context = context

    def invocation_metadata(self) -> list[_Metadatum]:
        return [_Metadatum(key, value) for key, value in self._context.invocation_metadata()]


class InferenceRPC:
    """Admission and error mapping around kserve's servicer, for one ingress replica."""

    def __init__(
        self,
        data_plane: DataPlane,
        api_keys: tuple[bytes, ...] | None,
        buckets: TokenBuckets | None,
        record: ErrorRecorder | None,
    ) -> None:
        self._servicer = InferenceServicer(data_plane, None)
        self._api_keys = api_keys
        self._buckets = buckets
        self._record = record

    async def call(
        self,
        method: str,
        request: Message,
        context: RayServegRPCContext,
        empty: Callable[[], Message],
        *,
        open_access: bool = False,
    ) -> Message:
        try:
            if not open_access:
                self._admit(context)
            handler: Callable[[Message, Any], Awaitable[Message]] = getattr(self._servicer, method)
            return await handler(request, _KServeContext(context))
        except Exception as error:
            serving_error = as_serving_error(error) or kserve_error(error)
            if serving_error is None:
                raise
            self._reject(context, serving_error)
            return empty()

    def _admit(self, context: RayServegRPCContext) -> None:
        metadata = dict(context.invocation_metadata())
        authorization = metadata.get("authorization")
        if self._api_keys is not None and not is_authorized(authorization, self._api_keys):
            raise Unauthenticated(
                "a valid API key is required: send metadata `authorization: Bearer <key>`"
            )
        if self._buckets is not None:
            wait = self._buckets.take(identity(authorization, _peer_host(context.peer())))
            if wait > 0:
                raise rate_limited(wait)

    def _reject(self, context: RayServegRPCContext, error: ServingError) -> None:
        if self._record is not None:
            self._record(error)
        context.set_code(GRPC_STATUS[error.reason])
        context.set_details(error.message)
        trailing = []
        retry = retry_after_s(error)
        if retry is not None:
            trailing.append(("retry-after", str(retry)))
        if error.field is not None:
            trailing.append((FIELD_METADATA, error.field))
        if trailing:
            context.set_trailing_metadata(trailing)


def _peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` → `10.0.0.7` (one bucket per client host, not per connection)."""
    _, _, address = peer.partition(":")
    return address.rsplit(":", 1)[0] or peer


class InferenceServiceMethods:
    """`inference.GRPCInferenceService` on a Serve deployment; set `self._rpc` in __init__."""

    _rpc: InferenceRPC

    async def ServerLive(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call(
            "ServerLive", request, grpc_context, pb.ServerLiveResponse, open_access=True
        )

    async def ServerReady(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call(
            "ServerReady", request, grpc_context, pb.ServerReadyResponse, open_access=True
        )

    async def ModelReady(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call(
            "ModelReady", request, grpc_context, pb.ModelReadyResponse, open_access=True
        )

    async def ServerMetadata(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call(
            "ServerMetadata", request, grpc_context, pb.ServerMetadataResponse
        )

    async def ModelMetadata(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call(
            "ModelMetadata", request, grpc_context, pb.ModelMetadataResponse
        )

    async def ModelInfer(self, request: Message, grpc_context: RayServegRPCContext) -> Message:
        return await self._rpc.call("ModelInfer", request, grpc_context, pb.ModelInferResponse)
