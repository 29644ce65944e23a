"""The Python clients of sd-serving: HTTP (`Client`, `AsyncClient`, with jobs and per-step
progress) and KServe v2 gRPC (`GrpcClient`, `AsyncGrpcClient`).

Installable and importable without the server: nothing here imports ray, torch, kserve or any
other part of `serving`."""

from serving.client.grpc import AsyncGrpcClient, GrpcClient
from serving.client.http import AsyncClient, Client
from serving.client.types import ClientError, Generation, Image

__all__ = [
    "AsyncClient",
    "AsyncGrpcClient",
    "Client",
    "ClientError",
    "Generation",
    "GrpcClient",
    "Image",
]
