"""The Ingress deployment, the app's composition root: each model's stages and the store behind
their handles, the one data plane over them, and both transports on top (the FastAPI app mounted
with `serve.ingress`; the v2 gRPC methods Ray's gRPC proxy calls by name)."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.dataplane.redis_store import RedisStore
from serving.dataplane.services import build_services
from serving.dataplane.stages import StageClient
from serving.deployments._replica import RayMeter, keep_publishing
from serving.deployments.handles import RayStages, RayStore
from serving.grpc.methods import InferenceRPC, InferenceServiceMethods
from serving.http.app import create_http_app
from serving.metrics import max_replicas_publisher
from serving.settings import Settings, Stage


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress(InferenceServiceMethods):
    """HTTP (the FastAPI app, built per replica) and KServe v2 gRPC (the methods inherited from
    InferenceServiceMethods; Ray's context fits their CallContext as it is)."""

    def __init__(
        self,
        settings: Settings,
        stages: dict[str, dict[Stage, DeploymentHandle]],
        results: DeploymentHandle | None,
    ) -> None:
        meter = RayMeter()
        clients: dict[str, StageClient] = {
            model: RayStages(handles["text_encoder"], handles["unet"], handles["vae"])
            for model, handles in stages.items()
        }
        # With Redis every replica holds its own connections; without, the one ResultStore.
        store = RedisStore.from_settings(settings) if results is None else RayStore(results)
        self._services = build_services(settings, clients, store, meter)
        self._rpc = InferenceRPC(self._services)
        ceilings = {"Ingress": settings.ingress.max_replicas}
        for model, handles in stages.items():
            for stage, handle in handles.items():
                ceilings[handle.deployment_name] = settings.stage(stage, model).max_replicas
        self._stop_publishing = keep_publishing(max_replicas_publisher(meter, ceilings))

    def in_flight(self) -> int:
        """Generations under way in this replica: `sd-serving serve` waits for 0 before it
        stops the stages they need."""
        return self._services.data_plane.in_flight

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self._services)

    def __del__(self) -> None:
        self._stop_publishing.set()
