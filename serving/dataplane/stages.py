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
class DenoiseJob:
    """One image to denoise. Embeddings are [tokens, dim]; guidance > 1 needs `negative_embeds`."""

    prompt_embeds: np.ndarray
    negative_embeds: np.ndarray | None
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str


@dataclass(frozen=True)
class StepProgress:
    """Image `image_index` finished denoising step `step` of `total`; `preview` is [h/8, w/8, 3]
    uint8 when asked for."""

    step: int
    total: int
    preview: np.ndarray | None = None
    image_index: int = 0


@dataclass(frozen=True)
class DenoiseResult:
    """The final latents [C, h, w], and how long the request waited for a batch slot."""

    latents: np.ndarray
    queued_ms: float


class StageClient(Protocol):
    async def encode_text(self, text: str) -> np.ndarray:
        """[tokens, dim] float32 embeddings of one prompt."""
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

    async def readiness(self) -> dict[str, bool]:
        """Per stage: whether a replica has loaded and answers."""
        ...
