"""The samplers clients may name, each a diffusers scheduler built from the model's own config."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}


class SchedulerFactory:
    """Fresh, independent scheduler instances: schedulers are stateful, one per request."""

    def __init__(self, base_config: dict[str, Any]) -> None:
        self._prototypes = {
            name: cls.from_config(base_config) for name, cls in SCHEDULER_CLASSES.items()
        }

    def create(self, name: str, steps: int, device: torch.device) -> SchedulerMixin:
        prototype = self._prototypes[name]
        scheduler = type(prototype).from_config(prototype.config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator) -> dict[str, Any]:
    """What StableDiffusionPipeline passes to `scheduler.step` (eta=0 for DDIM, the generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
