"""How the data plane talks to the model stages, and what travels between them.

`StageClient` is the one interface: over Ray deployment handles in the app
(serving/deployments/handles.py), in one process over the same engines in tests and local runs
(serving/engine/in_process.py). Stages pass numpy arrays, never PIL images or torch tensors.

Cancellation, the one rule: work stops when the coroutine awaiting it is cancelled (a deadline,
a client that hung up, a cancelled job). Every implementation carries that into its stage: the
UNet frees the request's batch slot at its next step boundary.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TextEmbedding:
    """A prompt as the denoiser sees it: hidden states [tokens, dim] and, for models with added
    text conditioning (SDXL), the pooled embedding [dim]."""

    hidden: np.ndarray
    pooled: np.ndarray | None = None


@dataclass(frozen=True)
class ImageLatents:
    """An input image's latent distribution [C, h, w], scaled as the denoiser's latents are: the
    denoiser draws the sample (mean + std · ε) from the request's generator."""

    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class DenoiseJob:
    """One image to denoise. The conditioning is a bag of per-row tensors named as the denoiser
    takes them (`encoder_hidden_states` [tokens, dim]; SDXL adds `text_embeds` [dim] and
    `time_ids` [6]); with guidance on, `negative_conditioning` holds the unconditional row's."""

    conditioning: dict[str, np.ndarray]
    negative_conditioning: dict[str, np.ndarray] | None
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    guidance_rescale: float = 0.0
    # A durable job's: checkpoint the denoising state every N steps (0: never), and resume from
    # such a checkpoint (serving/engine/checkpoint.py) instead of starting from noise.
    checkpoint_every: int = 0
    resume: bytes | None = None
    # Who waits for it, for the UNet's fair sharing (serving/engine/fair_queue.py): the client,
    # its weight, and the priority class's rank (0: interactive, 1: batch).
    client: str = ""
    weight: float = 1.0
    priority_rank: int = 0
    # When the UNet must be done with it (wall clock, `time.time()`: the replica may be on
    # another node): it refuses (QueueFull) a request it estimates it would finish later, rather
    # than start work thrown away at the deadline. None: no deadline.
    finish_by: float | None = None
    # Image-to-image: the input image's latents, and how much of the schedule to run from them
    # (strength 1: all of it, from noise over the image; 0.5: the second half).
    init_image: ImageLatents | None = None
    strength: float = 1.0
    # LoRA adapters applied to this request's rows: (name, scale) pairs.
    loras: tuple[tuple[str, float], ...] = ()
    # Inpainting (with `init_image`): the mask at latent resolution ([1, h, w], 1 = repaint,
    # 0 = keep) and the latents of the picture with the area to repaint blacked out.
    mask: np.ndarray | None = None
    masked_image: ImageLatents | None = None

    @property
    def guided(self) -> bool:
        return self.negative_conditioning is not None


@dataclass(frozen=True)
class StepProgress:
    """Image `image_index` finished denoising step `step` of `total`; `preview` is [h/8, w/8, 3]
    uint8 when asked for; `checkpoint` the state after this step, every `checkpoint_every`
    steps and after the last."""

    step: int
    total: int
    preview: np.ndarray | None = None
    image_index: int = 0
    checkpoint: bytes | None = None


@dataclass(frozen=True)
class DenoiseResult:
    """The final latents [C, h, w], and how long the request waited for a batch slot."""

    latents: np.ndarray
    queued_ms: float


class StageClient(Protocol):
    async def encode_text(
        self, text: str, loras: tuple[tuple[str, float], ...] = ()
    ) -> TextEmbedding:
        """One prompt's embeddings (float32)."""
        ...

    async def denoise(self, job: DenoiseJob) -> DenoiseResult: ...

    def denoise_stream(
        self, job: DenoiseJob, preview: bool
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        """A StepProgress after every step, then the DenoiseResult."""
        ...

    async def decode(self, latents: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 pixels."""
        ...

    async def encode_image(self, pixels: np.ndarray) -> ImageLatents:
        """An input image ([3, H, W] float32 in [-1, 1]) as the VAE's latent distribution."""
        ...

    async def readiness(self) -> dict[str, bool]:
        """Per stage: whether a replica has loaded and answers."""
        ...
