"""The v2 gRPC methods: admission (the one access policy), the request size limit, then kserve's
generated servicer over the same kserve data plane as REST; errors answer with their status code.

Ray's gRPC proxy calls the ingress deployment's methods named like the RPCs
(serving/deployments/ingress.py); `InferenceServicer` serves the same methods on a grpc.aio
server in one process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from google.protobuf.message import Message
from kserve.protocol.grpc.servicer import InferenceServicer as KServeServicer

from serving.dataplane.access import Operation
from serving.dataplane.services import Services
from serving.dataplane.v2 import kserve_error
from serving.errors import PayloadTooLarge, as_serving_error
from serving.grpc.errors import CallContext, reject
from serving.grpc.protos import pb, pb_grpc

# The methods that answer anyone (health), by RPC name.
OPERATIONS = {
    "ServerLive": Operation.SERVER_LIVE,
    "ServerReady": Operation.SERVER_READY,
    "ModelReady": Operation.MODEL_READY,
}


class _Metadatum(NamedTuple):
    key: str
    value: str


class _KServeContext:
    """The call's metadata as kserve's servicer reads it: objects with key and value."""

    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> list[_Metadatum]:
        return [_Metadatum(key, value) for key, value in self._metadata.items()]


class InferenceRPC:
    """Admission and error mapping around kserve's servicer, for one ingress replica."""

    def __init__(self, services: Services) -> None:
        self._servicer = KServeServicer(services.v2, None)
        self._access = services.access
        self._metrics = services.metrics
        self._max_bytes = services.settings.max_request_bytes

    async def call(
        self, method: str, request: Message, context: CallContext, empty: Callable[[], Message]
    ) -> Message:
        try:
            metadata = {key.lower(): value for key, value in context.invocation_metadata()}
            operation = OPERATIONS.get(method, Operation.OTHER)
            await self._access.admit(
                operation, metadata.get("authorization"), peer_host(context.peer())
            )
            size = request.ByteSize()
            if size > self._max_bytes:
                raise PayloadTooLarge(
                    f"the request is {size} bytes; the limit is {self._max_bytes} bytes"
                )
            handler: Callable[[Message, Any], Awaitable[Message]] = getattr(self._servicer, method)
            return await handler(request, _KServeContext(metadata))
        except Exception as error:
            serving_error = as_serving_error(error) or kserve_error(error)
            if serving_error is None:
                raise
            self._metrics.record_rejection(serving_error)
            reject(context, serving_error)
            return empty()


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` → `10.0.0.7` (one bucket per client host, not per connection)."""
    _, _, address = peer.partition(":")
    return address.rsplit(":", 1)[0] or peer


class InferenceServiceMethods:
    """`inference.GRPCInferenceService`'s methods; set `self._rpc` in __init__. (Ray's proxy
    passes the context as the keyword `grpc_context`.)"""

    _rpc: InferenceRPC

    async def ServerLive(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call("ServerLive", request, grpc_context, pb.ServerLiveResponse)

    async def ServerReady(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call("ServerReady", request, grpc_context, pb.ServerReadyResponse)

    async def ModelReady(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call("ModelReady", request, grpc_context, pb.ModelReadyResponse)

    async def ServerMetadata(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call(
            "ServerMetadata", request, grpc_context, pb.ServerMetadataResponse
        )

    async def ModelMetadata(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call(
            "ModelMetadata", request, grpc_context, pb.ModelMetadataResponse
        )

    async def ModelInfer(self, request: Message, grpc_context: CallContext) -> Message:
        return await self._rpc.call("ModelInfer", request, grpc_context, pb.ModelInferResponse)


class InferenceServicer(InferenceServiceMethods, pb_grpc.GRPCInferenceServiceServicer):
    """The same methods for a grpc.aio server in this process (tests, one-process runs):
    `pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(services), server)`."""

    def __init__(self, services: Services) -> None:
        self._rpc = InferenceRPC(services)
