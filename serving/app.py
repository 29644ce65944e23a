"""`build_app(args)`: the typed entry point Ray Serve and KubeRay's RayService import.

serve run serving.app:build_app model=/models/sd15
# RayService: importPath: serving.app:build_app
#             args: {model: /mnt/models, unet: {max_batch_size: 4}}
"""

from __future__ import annotations

import logging
import pprint
from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from serving.deployments.ingress import Ingress
from serving.deployments.result_store import ResultStore
from serving.deployments.text_encoder import TextEncoder
from serving.deployments.unet import UNetDenoiser
from serving.deployments.vae import VAEDecoder
from serving.settings import Settings, StageSettings

logger = logging.getLogger(__name__)


def _configured(deployment: Any, stage: StageSettings) -> Deployment:
    # `Any`: mypy sees a @serve.deployment class as the plain class, not as a Deployment.
    options: dict[str, Any] = {
        "autoscaling_config": stage.autoscaling_config(),
        "ray_actor_options": stage.ray_actor_options(),
        "max_ongoing_requests": stage.max_ongoing_requests,
    }
    logger.info("%s options:\n%s", deployment.name, pprint.pformat(options))
    return deployment.options(**options)


def build_app(args: dict[str, Any] | Settings | None = None) -> Application:
    """The application (ingress, three model stages, result store); `args` are Settings fields
    overriding SD_* variables."""
    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    text_encoder = _configured(TextEncoder, settings.text_encoder).bind(settings)
    unet = _configured(UNetDenoiser, settings.unet).bind(settings)
    vae = _configured(VAEDecoder, settings.vae).bind(settings)
    results = _configured(ResultStore, settings.result_store).bind(settings)
    return _configured(Ingress, settings.ingress).bind(settings, text_encoder, unet, vae, results)
