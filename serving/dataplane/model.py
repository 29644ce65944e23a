"""What the ingress knows of each served model, read from its configs and tokenizer (no weights):
its family, the defaults and limits of requests to it, the samplers it takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from serving.dataplane.prompts import PromptGuard
from serving.dataplane.request import SCHEDULER_NAMES, GenerationRequest, ModelProfile
from serving.engine.schedulers import SchedulerFactory, image_start_index
from serving.models import loader
from serving.models.loader import ModelInfo
from serving.models.loras import unet_layer_inputs
from serving.settings import ModelSpec, Rollout, Settings

# Family defaults where the service-wide and the model's own settings leave them open.
STEPS = 20
FEW_STEPS = 4  # Turbo- and LCM-style models: distilled for 1 to 4 (LCM: 8) steps
GUIDANCE = {"sd": 7.5, "sdxl": 5.0}  # StableDiffusionPipeline's, StableDiffusionXLPipeline's
LCM_GUIDANCE = 8.5  # LatentConsistencyModelPipeline's (the embedding takes guidance_scale - 1)
LCM_MAX_STEPS = 8
# An LCM model takes its own sampler only; the others take every sampler but LCM's.
GENERAL_SAMPLERS = tuple(name for name in SCHEDULER_NAMES if name not in ("default", "lcm"))


@dataclass(frozen=True)
class ServedModel:
    name: str  # what the API reports
    id: str  # name and source: keys the result cache, so another checkpoint never hits
    version: str  # the weights' fingerprint: a job's checkpoint resumes only on the same weights
    info: ModelInfo
    profile: ModelProfile
    guard: PromptGuard
    schedulers: SchedulerFactory  # the model's samplers, for the length of a schedule
    # The UNet's layers and their input widths, to check LoRA adapters against (from its config).
    unet_layers: dict[str, int] = field(default_factory=dict)
    # Its versions (adapters over these weights), champion and canary.
    rollout: Rollout = field(default_factory=Rollout)

    @classmethod
    def load(cls, settings: Settings, name: str, spec: ModelSpec) -> ServedModel:
        source = loader.resolve_source(spec.source, settings)
        info = loader.read_model_info(source)
        return cls(
            name=name,
            id=f"{name}@{source}",
            version=loader.weights_fingerprint(source),
            info=info,
            profile=profile(name, info, settings, spec),
            guard=PromptGuard(loader.load_tokenizers(source)[0]),
            schedulers=SchedulerFactory(loader.load_scheduler_config(source)),
            unet_layers=unet_layer_inputs(source),
            rollout=spec.rollout,
        )

    def denoising_steps(self, request: GenerationRequest) -> int:
        """The denoiser iterations one image takes: `steps`, or one more for PNDM's warm-up;
        an image-to-image request only the schedule's last `strength` part."""
        schedule = self.schedulers.create(request.scheduler, request.steps, torch.device("cpu"))
        begin = 0
        if request.strength is not None:
            begin = image_start_index(request.steps, request.strength, schedule.order)
        return len(schedule.timesteps) - begin

    def describe(self) -> dict[str, Any]:
        """The model as the API reports it: family, request defaults and limits, samplers."""
        profile = self.profile
        return {
            "family": profile.kind,
            "prediction_type": self.info.prediction_type,
            "native_size": self.info.native_size,
            "size_multiple": profile.size_multiple,
            "defaults": {
                "width": profile.size,
                "height": profile.size,
                "steps": profile.steps,
                "guidance_scale": profile.guidance_scale,
                "scheduler": profile.scheduler,
                "shipped_scheduler": self.info.scheduler,
            },
            "max_steps": profile.max_steps,
            "samplers": list(profile.samplers),
            "size_conditioning": profile.size_conditioning,
            "versions": {
                name: {"adapter": version.adapter, "scale": version.scale}
                for name, version in self.rollout.versions.items()
            },
            "champion": self.rollout.champion_version,
            "challenger": self.rollout.challenger,
            "canary_percent": self.rollout.canary_percent,
        }


def profile(name: str, info: ModelInfo, settings: Settings, spec: ModelSpec) -> ModelProfile:
    """Request defaults and limits: the model's own settings over the service-wide ones over the
    family's."""
    few_step = info.few_step or info.guidance_embedding
    samplers: tuple[str, ...]
    if info.guidance_embedding:
        family_guidance, samplers = LCM_GUIDANCE, ("lcm", "default")
    else:
        family_guidance = 0.0 if info.few_step else GUIDANCE[info.family]
        samplers = (*GENERAL_SAMPLERS, "default")
    own, shared = spec.defaults, settings.defaults
    scheduler = _first(own.scheduler, shared.scheduler, "default")
    if scheduler not in samplers:
        raise ValueError(
            f"model {name} ({info.kind}) cannot default to scheduler {scheduler!r}; "
            f"it takes {', '.join(samplers)}"
        )
    return ModelProfile(
        name=name,
        kind=info.kind,
        size=own.size or info.native_size,
        steps=_first(own.steps, shared.steps, FEW_STEPS if few_step else STEPS),
        guidance_scale=_first(own.guidance_scale, shared.guidance_scale, family_guidance),
        scheduler=scheduler,
        max_steps=min(
            settings.limits.max_steps,
            _first(own.max_steps, LCM_MAX_STEPS if info.guidance_embedding else 10**6),
        ),
        samplers=samplers,
        size_conditioning=info.family == "sdxl",
        output_format=shared.output_format,
        size_multiple=info.vae_scale_factor,
        inpainting=info.inpainting,
    )


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)
