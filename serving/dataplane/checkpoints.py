"""Where a durable job keeps its denoising checkpoints, so a job taken over by another replica
resumes each image at its last checkpoint instead of from noise.

The data plane asks the denoiser for a checkpoint every `every` steps of every image and saves
each one it gets (serving/dataplane/service.py); a job's next attempt loads them before its
first step. The bytes are the engine's (serving/engine/checkpoint.py); here they are opaque. A
checkpoint remembers the weights it was made with: one made with other weights is never
resumed (the image would mix two models), the image starts over instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Checkpoint:
    step: int  # denoising steps done
    state: bytes


class JobCheckpoints(Protocol):
    @property
    def every(self) -> int:
        """Steps between checkpoints."""
        ...

    async def load(self) -> dict[int, Checkpoint]:
        """The latest checkpoint of each image (by image index) made with these weights."""
        ...

    async def save(self, image_index: int, checkpoint: Checkpoint) -> None: ...
