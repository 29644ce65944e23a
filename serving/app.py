"""`build_app(args)`: the typed entry point Ray Serve and KubeRay's RayService import.

serve run serving.app:build_app unet_max_batch_size=4
# RayService: importPath: serving.app:build_app, args: {model: /mnt/models}
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from serving.settings import Settings, StageSettings
from serving.stages.ingress import Ingress
from serving.stages.results import ResultStore
from serving.stages.text_encoder import TextEncoder
from serving.stages.unet import UNetDenoiser
from serving.stages.vae import VAEDecoder


def _configured(deployment: Any, stage: StageSettings) -> Deployment:
    # `Any`: mypy sees a @serve.deployment class as the plain class, not as a Deployment.
    return deployment.options(
        autoscaling_config=stage.autoscaling_config(),
        ray_actor_options=stage.ray_actor_options(),
        max_ongoing_requests=stage.max_ongoing_requests,
    )


def build_app(args: dict[str, Any] | Settings | None = None) -> Application:
    """The application (ingress, three model stages, result store); `args` are Settings fields
    overriding SD_* variables."""
    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    text_encoder = _configured(TextEncoder, settings.text_encoder).bind(settings)
    unet = _configured(UNetDenoiser, settings.unet).bind(settings)
    vae = _configured(VAEDecoder, settings.vae).bind(settings)
    results = _configured(ResultStore, settings.result_store).bind(settings)
    return _configured(Ingress, settings.ingress).bind(settings, text_encoder, unet, vae, results)
