"""The whole ingress in this process, for the fast tier: the real HTTP app under uvicorn and the
real v2 gRPC servicer on a grpc.aio server, over the one data plane, the in-process stages (the
same engines the Ray deployments wrap) and the in-memory store. No Ray; it starts in about a
second and answers on real sockets, so every client (httpx, kserve's, OpenAI's, ours, the CLI in
a subprocess) talks to it as it would to a pod."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import uvicorn

from serving.dataplane.redis_store import RedisStore
from serving.dataplane.services import Services, build_services
from serving.dataplane.store import InMemoryStore
from serving.engine.in_process import InProcessStages
from serving.grpc.methods import InferenceServicer
from serving.grpc.protos import pb_grpc
from serving.http.app import create_http_app
from serving.metrics import MemoryMeter
from serving.settings import Settings
from tests.helpers.net import wait_until

T = TypeVar("T")
# What the fast tier's default service is configured with (tests/unit/conftest.py).
WEBHOOK_SECRET = "unit-webhook-secret"
CORS_ORIGIN = "https://app.example.com"


@dataclass
class LocalService:
    url: str
    grpc_target: str
    services: Services
    stages_by_model: dict[str, InProcessStages]
    meter: MemoryMeter
    loop: asyncio.AbstractEventLoop

    @property
    def stages(self) -> InProcessStages:
        """The default model's stages."""
        return self.stages_by_model[self.services.data_plane.model().name]

    def client(self, timeout: float = 60.0, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def grpc_stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.grpc_target))

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the service's event loop (where its asyncio state lives)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextlib.contextmanager
def local_service(model_dir: Path | None, **settings: Any) -> Iterator[LocalService]:
    """The service over the model in `model_dir` (or the `models` of `settings`), with
    `settings` on top of the defaults."""
    if model_dir is not None:
        settings = {"model": str(model_dir), **settings}
    config = Settings(**settings)
    meter = MemoryMeter()
    stages = {name: InProcessStages.load(config, name, meter) for name in config.served_models()}
    store = RedisStore.from_settings(config) if config.redis_url else InMemoryStore(config)
    services = build_services(config, dict(stages), store, meter)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="local-service", daemon=True)
    thread.start()
    # Bound here and handed to uvicorn: a port picked free and bound later can be taken in
    # between (by the gRPC server's own port 0 below, or any outgoing connection).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    http_port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_http_app(services),
            log_level="warning",
            lifespan="on",  # the job worker starts and stops with the app, as under Ray
        )
    )
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[listener]), loop)

    async def start_grpc() -> tuple[grpc.aio.Server, int]:
        grpc_server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(services), grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        return grpc_server, port

    grpc_server, grpc_port = asyncio.run_coroutine_threadsafe(start_grpc(), loop).result(30)
    try:
        if not wait_until(lambda: server.started or serving.done(), timeout_s=60):
            raise RuntimeError("uvicorn did not start within 60 s")
        if serving.done():
            raise RuntimeError(f"uvicorn stopped as it started: {serving.exception()!r}")
        yield LocalService(
            f"http://127.0.0.1:{http_port}",
            f"127.0.0.1:{grpc_port}",
            services,
            stages,
            meter,
            loop,
        )
    finally:
        server.should_exit = True
        serving.result(30)
        asyncio.run_coroutine_threadsafe(grpc_server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        for model_stages in stages.values():
            model_stages.close()
