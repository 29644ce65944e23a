"""A request's denoising state as bytes, and back: what a job needs to resume mid-denoise on
another replica and end at the image an uninterrupted run makes.

The state is the step index, the latents, the scheduler's mutable attributes (a multistep
sampler's remembered model outputs, its step index, PNDM's counter and history) and the
generator's state (the ancestral and LCM samplers draw noise at every step). The scheduler itself
is rebuilt from the model's config with the same sampler and step count, then overwritten with
the saved attributes. Plain `torch.save`, read back with `weights_only=True`: a checkpoint can
carry tensors, numbers and lists, never code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

FORMAT = 1
_STORABLE = (torch.Tensor, int, float, bool, str, type(None))


@dataclass(frozen=True)
class DenoiseState:
    step: int  # steps done
    latents: torch.Tensor
    scheduler: dict[str, Any]
    generator: torch.Tensor  # torch.Generator.get_state()


def capture(
    step: int, latents: torch.Tensor, scheduler: SchedulerMixin, generator: torch.Generator
) -> bytes:
    """The state after `step` steps, as bytes (on the engine thread, between two steps)."""
    state = {
        "format": FORMAT,
        "step": step,
        "latents": latents.detach().cpu(),
        "scheduler": {
            name: _to_cpu(value)
            for name, value in vars(scheduler).items()
            if not name.startswith("_internal") and _storable(value)
        },
        "generator": generator.get_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read(data: bytes) -> DenoiseState:
    """A checkpoint's state; ValueError when the bytes are not one this code wrote."""
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:
        raise ValueError(f"not a denoising checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a denoising checkpoint of format 1")
    return DenoiseState(state["step"], state["latents"], state["scheduler"], state["generator"])


def restore(state: DenoiseState, scheduler: SchedulerMixin, device: torch.device) -> None:
    """Overwrite a freshly built scheduler (same sampler, same step count) with the saved
    attributes; a tensor goes where the fresh scheduler keeps its own (Euler keeps sigmas on the
    CPU), or to `device`."""
    fresh = vars(scheduler)
    for name, value in state.scheduler.items():
        own = fresh.get(name)
        target = own.device if isinstance(own, torch.Tensor) else device
        setattr(scheduler, name, _to(value, target))


def _storable(value: Any) -> bool:
    if isinstance(value, _STORABLE):
        return True
    if isinstance(value, list | tuple):
        return all(isinstance(item, _STORABLE) for item in value)
    return False  # numpy arrays (PNDM's schedule) are rebuilt by set_timesteps, never stepped


def _to_cpu(value: Any) -> Any:
    return _to(value, torch.device("cpu"))


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to(item, device) for item in value)
    return value
