"""The Ingress deployment: owns the protocols, calls the stages through the generation service."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.http.routes import create_http_app
from serving.metrics import IngressMetrics, max_replicas_publisher
from serving.models import loader
from serving.prompts import PromptGuard
from serving.service import GenerationService, Stages
from serving.settings import Settings
from serving.stages.refresh import keep_publishing


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
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

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_http_app(self._service, IngressMetrics.create())
