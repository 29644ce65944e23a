"""Where stages run and in which precision: CUDA in half precision when present, else CPU fp32."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.settings import Settings, StageSettings

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def choose_placement(settings: Settings) -> Placement:
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if settings.dtype != "auto":
        dtype = _DTYPES[settings.dtype]
    elif device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    return Placement(device=device, dtype=dtype)


def configured_threads(settings: Settings, stage: StageSettings) -> int | None:
    """The torch intra-op threads a stage's replicas were told to use (None: Ray's, which
    follow num_cpus)."""
    return stage.torch_threads or settings.torch_threads
