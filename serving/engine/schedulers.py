"""The samplers clients may name, each a diffusers scheduler built from the model's own config.

`default` is the scheduler the model ships with, as its config describes it (class, timestep
spacing, prediction type, zero-terminal-SNR betas): what its diffusers pipeline would run.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, options over the model's config)
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "pndm": (PNDMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
SCHEDULER_CLASSES = {name: cls for name, (cls, _) in SCHEDULERS.items()}


class SchedulerFactory:
    """Fresh, independent scheduler instances: schedulers are stateful, one per request."""

    def __init__(self, base_config: dict[str, Any]) -> None:
        shipped: type[SchedulerMixin] = getattr(diffusers, str(base_config["_class_name"]))
        self._prototypes = {
            name: cls.from_config(base_config, **options)
            for name, (cls, options) in SCHEDULERS.items()
        }
        self._prototypes["default"] = shipped.from_config(base_config)

    def create(self, name: str, steps: int, device: torch.device) -> SchedulerMixin:
        prototype = self._prototypes[name]
        scheduler = type(prototype).from_config(prototype.config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator) -> dict[str, Any]:
    """What the pipelines pass to `scheduler.step` (eta=0 for DDIM, the generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def image_start_index(steps: int, strength: float, order: int) -> int:
    """Where an image-to-image request starts in its schedule's timesteps, as the diffusers
    image-to-image pipelines' get_timesteps: only the last `strength` part of `steps` runs."""
    kept = min(int(steps * strength), steps)
    return max(steps - kept, 0) * order
