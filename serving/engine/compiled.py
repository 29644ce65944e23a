"""The denoiser's fast path: channels_last memory, SDPA attention, and `torch.compile` per
batch-size bucket (with CUDA graphs in the `reduce-overhead` mode).

Step-level batching changes the batch every step, and a compiled graph (a captured CUDA graph
even more) is specialised to one batch size. Rows are padded up to the next bucket (1, 2, 4, 8,
…, the largest batch), so there is one compilation per bucket; `warm_up` compiles them all at
replica start for the model's native latent size, and inductor's cache on disk (`cache_dir`)
makes a restart load them instead of compiling again. Padding repeats the last row: UNet rows
never mix, so the real rows' outputs do not depend on it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from serving.models.device import Placement
from serving.settings import Settings

logger = logging.getLogger(__name__)
# Each bucket and each other latent size is one graph; leave room beyond dynamo's default of 8.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class FastPath:
    compile_mode: str | None  # a torch.compile mode, or None for eager
    channels_last: bool
    sdpa: bool  # False: diffusers' plain attention processor instead of PyTorch's SDPA
    buckets: tuple[int, ...]  # batch sizes (UNet rows) compiled for; empty when not compiled
    cache_dir: Path | None = None

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None


# The UNet as diffusers builds it: no compile, default layout, SDPA attention.
EAGER = FastPath(None, channels_last=False, sdpa=True, buckets=())


def choose_fast_path(settings: Settings, placement: Placement, max_batch_size: int) -> FastPath:
    """The settings' fast path for a replica; `auto` turns it on with CUDA only."""
    cuda = placement.device.type == "cuda"
    mode = settings.compile_mode
    if mode == "auto":
        mode = "reduce-overhead" if cuda else "off"
    compiled = mode != "off"
    return FastPath(
        compile_mode=mode if compiled else None,
        channels_last=settings.channels_last == "on" or (settings.channels_last == "auto" and cuda),
        sdpa=settings.sdpa_attention,
        # Classifier-free guidance gives a request two rows.
        buckets=batch_buckets(2 * max_batch_size) if compiled else (),
        cache_dir=settings.compile_cache_dir or settings.cache_dir / "torch-compile",
    )


def batch_buckets(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, … below `max_rows`, then `max_rows` itself."""
    buckets, size = [], 1
    while size < max_rows:
        buckets.append(size)
        size *= 2
    return (*buckets, max_rows)


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding `rows`; `rows` itself past the largest (compiled on demand)."""
    return next((bucket for bucket in buckets if bucket >= rows), rows)


class Denoise(Protocol):
    latent_channels: int
    input_channels: int
    guidance_embedding_dim: int | None

    def __call__(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditioning: dict[str, torch.Tensor]
    ) -> torch.Tensor: ...


def prepare_unet(unet: UNet2DConditionModel, fast: FastPath) -> torch.nn.Module:
    """The module the engine calls: the UNet with the fast path's layout and attention, compiled
    when asked (lazily: torch compiles on the first call of each shape)."""
    if not fast.sdpa:
        unet.set_attn_processor(AttnProcessor())
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
    if not fast.compiled:
        return unet
    if fast.cache_dir is not None:
        # Inductor reads this when it first compiles; FX graph and autotuning caches live here.
        fast.cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(fast.cache_dir))
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    return cast(torch.nn.Module, torch.compile(unet, mode=fast.compile_mode, dynamic=False))


class BucketedDenoise:
    """Wraps a denoise call: pads the rows up to a bucket, runs it, returns the real rows."""

    def __init__(self, inner: Denoise, fast: FastPath) -> None:
        self._inner = inner
        self._fast = fast
        self.latent_channels = inner.latent_channels
        self.input_channels = inner.input_channels
        self.guidance_embedding_dim = inner.guidance_embedding_dim

    def __call__(
        self, sample: torch.Tensor, timesteps: torch.Tensor, conditioning: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        rows = sample.shape[0]
        padded = bucket_for(rows, self._fast.buckets)
        if self._fast.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        output = self._inner(
            _pad(sample, padded),
            _pad(timesteps, padded),
            {name: _pad(tensor, padded) for name, tensor in conditioning.items()},
        )
        real = output[:rows]
        # CUDA graphs reuse their output buffer on the next replay: keep our own copy.
        return real.clone() if self._fast.compile_mode == "reduce-overhead" else real

    @torch.inference_mode()
    def warm_up(self, example: dict[str, Any]) -> float:
        """Run every bucket once on `example` (one row of each input); seconds it took."""
        started = time.monotonic()
        for bucket in self._fast.buckets:
            sample = _pad(example["sample"], bucket)
            conditioning = {k: _pad(v, bucket) for k, v in example["conditioning"].items()}
            self(sample, _pad(example["timesteps"], bucket), conditioning)
        took = time.monotonic() - started
        logger.info("denoiser compiled for batch sizes %s in %.1f s", self._fast.buckets, took)
        return took


def _pad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def warm_up_example(
    unet: UNet2DConditionModel, device: torch.device, dtype: torch.dtype, size: int | None = None
) -> dict[str, Any]:
    """One row of every input the UNet takes, read from its config, at latent side `size`
    (default: its native one)."""
    config = unet.config
    size = size or int(config.sample_size)
    conditioning = {
        # 77: CLIP's context length, what every Stable Diffusion tokenizer pads to.
        "encoder_hidden_states": torch.zeros(1, 77, int(config.cross_attention_dim)),
    }
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and six size numbers
        time_dims = 6 * int(config.addition_time_embed_dim)
        pooled = int(config.projection_class_embeddings_input_dim) - time_dims
        conditioning["text_embeds"] = torch.zeros(1, pooled)
        conditioning["time_ids"] = torch.zeros(1, 6)
    if config.time_cond_proj_dim is not None:  # LCM's guidance embedding
        conditioning["timestep_cond"] = torch.zeros(1, int(config.time_cond_proj_dim))
    return {
        "sample": torch.zeros(1, int(config.in_channels), size, size, device=device, dtype=dtype),
        "timesteps": torch.full((1,), 500.0, device=device),
        "conditioning": {k: v.to(device=device, dtype=dtype) for k, v in conditioning.items()},
    }
