"""The Ingress deployment: owns the protocols, calls the stages through the generation service."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.apikeys import load_api_keys
from serving.http.routes import create_http_app, result_observer
from serving.kserve_v2 import StableDiffusionModel, create_data_plane
from serving.metrics import IngressMetrics, max_replicas_publisher
from serving.models import loader
from serving.prompts import PromptGuard
from serving.ratelimit import token_buckets
from serving.rpc.methods import InferenceRPC, InferenceServiceMethods
from serving.service import GenerationService, Stages
from serving.settings import Settings
from serving.stages.refresh import keep_publishing


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress(InferenceServiceMethods):
    """HTTP (FastAPI app) and KServe v2 gRPC (methods called by Ray's gRPC proxy), both over
    the one GenerationService and one kserve DataPlane."""

    def __init__(
        self,
        settings: Settings,
        text_encoder: DeploymentHandle,
        unet: DeploymentHandle,
        vae: DeploymentHandle,
        results: DeploymentHandle,
    ) -> None:
        source = loader.resolve_model_source(settings)
        self._service = GenerationService(
            settings,
            Stages(text_encoder=text_encoder, unet=unet, vae=vae, results=results),
            PromptGuard(loader.load_tokenizer(source), settings.limits),
            native_size=loader.read_model_info(source).native_size,
            model_id=f"{settings.model_name}@{source}",
        )

        publish = max_replicas_publisher(
            {
                "Ingress": settings.ingress.max_replicas,
                "TextEncoder": settings.text_encoder.max_replicas,
                "UNetDenoiser": settings.unet.max_replicas,
                "VAEDecoder": settings.vae.max_replicas,
            }
        )
        self._stop_publishing = keep_publishing(publish)

        self._metrics = IngressMetrics.create()
        self._buckets = token_buckets(settings)
        self._data_plane = create_data_plane(
            StableDiffusionModel(self._service, result_observer(self._metrics))
        )
        # One set of keys and buckets for both transports: a client's limit spans HTTP and gRPC.
        self._api_keys = (
            None if settings.api_keys_file is None else load_api_keys(settings.api_keys_file)
        )
        self._rpc = InferenceRPC(
            self._data_plane, self._api_keys, self._buckets, self._metrics.record_rejection
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(
            self._service, self._metrics, self._data_plane, self._api_keys, self._buckets
        )
