"""`build_app(args)`: the typed entry point Ray Serve and KubeRay's RayService import.

serve run serving.app:build_app model=/models/sd15
# RayService: importPath: serving.app:build_app
#             args: {models: {sd15: {source: /mnt/models/sd15}, sdxl: {source: ...}}}

Each served model gets its own TextEncoder, UNetDenoiser and VAEDecoder deployments (own replicas,
autoscaling, GPU share and node pool); one Ingress routes every request by model name, and one
ResultStore keeps what the ingress replicas share (not deployed with SD_REDIS_URL: Redis does).
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
from serving.errors import RETRY_AFTER_S, Reason
from serving.settings import Settings, Stage, StageSettings

logger = logging.getLogger(__name__)
MODEL_STAGES: dict[Stage, Any] = {
    "text_encoder": TextEncoder,
    "unet": UNetDenoiser,
    "vae": VAEDecoder,
}


def deployment_name(stage_class: str, model: str, settings: Settings) -> str:
    """`UNetDenoiser` when one model is served, `UNetDenoiser-<model>` for each of several."""
    return stage_class if len(settings.served_models()) == 1 else f"{stage_class}-{model}"


def _configured(
    deployment: Any, stage: StageSettings, drain_timeout_s: float, name: str | None = None
) -> Deployment:
    # `Any`: mypy sees a @serve.deployment class as the plain class, not as a Deployment.
    options: dict[str, Any] = {
        "autoscaling_config": stage.autoscaling_config(),
        "ray_actor_options": stage.ray_actor_options(),
        "max_ongoing_requests": stage.max_ongoing_requests,
        # A stopping replica finishes what it holds, up to the drain timeout, then goes.
        "graceful_shutdown_timeout_s": drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
    }
    if name is not None:
        options["name"] = name
    logger.info("%s options:\n%s", name or deployment.name, pprint.pformat(options))
    return deployment.options(**options)


def build_app(args: dict[str, Any] | Settings | None = None) -> Application:
    """The application (ingress, each model's three stages, the result store unless Redis holds
    shared state); `args` are Settings
    fields overriding SD_* variables."""
    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    stages = {
        model: {
            stage: _configured(
                deployment,
                settings.stage(stage, model),
                settings.drain_timeout_s,
                deployment_name(deployment.name, model, settings),
            ).bind(settings, model)
            for stage, deployment in MODEL_STAGES.items()
        }
        for model in settings.served_models()
    }
    results = None
    if settings.redis_url is None:
        store = _configured(ResultStore, settings.result_store, settings.drain_timeout_s)
        results = store.bind(settings)
    ingress = _configured(Ingress, settings.ingress, settings.drain_timeout_s).options(
        # Beyond them, Serve's proxy refuses (serving/http/proxy.py puts it in our error shape).
        max_queued_requests=settings.ingress.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S[Reason.QUEUE_FULL]},
    )
    return ingress.bind(settings, stages, results)
