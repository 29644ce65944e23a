"""Prompt adherence in the captioned world: a small classifier of colour, shape and background,
trained on the world generator's own labels, that scores generated images against their prompts.
It knows the world's values and the new concept the tuning scenario brings (the cross).

Plain torch (torchvision does not install beside the local torch build). For real models the
counterpart is CLIP score (torchmetrics' `CLIPScore`) where CLIP weights are available.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

from serving.training.world import KNOWN, batches, combinations, parse_caption, render, scenes

INPUT_SIZE = 64
# Scenes the evaluator never trains on (it draws from seed 1): its near-perfect control.
HELD_OUT_SEED = 999
# Bump when the classifier or its training changes, so older cached weights are not reused.
EVALUATOR_VERSION = "2"  # 2: knows the new concepts too


class AttributeClassifier(nn.Module):
    """Four strided convolutions, max-pooled (a corner anywhere tells a square from a circle),
    and one linear head per attribute."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(2 * width, len(values)) for name, values in KNOWN.items()}
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}


def as_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """[H, W, 3] uint8 images (any size) → [N, 3, 64, 64] floats in [0, 1]."""
    batch = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images])
    batch = batch.float() / 255.0
    if batch.shape[-1] != INPUT_SIZE:
        batch = functional.interpolate(batch, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return batch


def train_evaluator(steps: int = 1000, batch_size: int = 32, seed: int = 0) -> AttributeClassifier:
    """Trained on freshly drawn scenes (never the same twice), seeded: deterministic."""
    torch.manual_seed(seed)
    model = AttributeClassifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    drawn = batches(batch_size, INPUT_SIZE, seed=seed + 1, drawn_from=combinations(*KNOWN.values()))
    model.train()
    for _ in range(steps):
        batch, images = next(drawn)
        logits = model(as_batch(list(images)))
        loss = sum(
            functional.cross_entropy(
                logits[name],
                torch.tensor([KNOWN[name].index(s.attributes[name]) for s in batch]),
            )
            for name in KNOWN
        )
        optimiser.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimiser.step()
    return model.eval()


def held_out_renders(
    count: int = 240, size: int = 128, drawn_from: Sequence[dict[str, str]] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Scenes from a seed training never uses (of the world, or of `drawn_from`'s
    combinations), rendered, with their captions."""
    drawn = list(scenes(count, seed=HELD_OUT_SEED, drawn_from=drawn_from))
    return [np.asarray(render(scene, size)) for scene in drawn], [s.caption for s in drawn]


def cached_evaluator(cache_dir: Path) -> AttributeClassifier:
    """The evaluator trained once per machine (about 30 s on 2 cores) and kept under
    `cache_dir`; training is seeded, so every machine gets the same classifier."""
    path = cache_dir / f"world-evaluator-v{EVALUATOR_VERSION}.safetensors"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            save_file(train_evaluator().state_dict(), str(path))
    model = AttributeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.inference_mode()
def draw(
    pipeline: DiffusionPipeline, prompts: list[str], seed: int, steps: int, guidance: float
) -> list[np.ndarray]:
    """The prompts drawn in one batch by a diffusers pipeline (the service's images equal it
    within 1/255), as the service's [H, W, 3] uint8 images."""
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images
    return [(image * 255).round().astype(np.uint8) for image in images]


@dataclass(frozen=True)
class Adherence:
    """Per attribute: the share of images showing what their prompt asked for, and the confusion
    matrix (rows: asked, columns: seen, in KNOWN order)."""

    accuracy: dict[str, float]
    confusion: dict[str, list[list[int]]]
    images: int

    def summary(self) -> str:
        return ", ".join(f"{name} {value:.0%}" for name, value in self.accuracy.items())


@torch.inference_mode()
def score(
    model: AttributeClassifier, images: Sequence[np.ndarray], prompts: Sequence[str]
) -> Adherence:
    """How often each image shows its prompt's colour, shape and background. Prompts outside
    the world are skipped."""
    kept = [(image, parse_caption(p)) for image, p in zip(images, prompts, strict=True)]
    pairs = [(image, asked) for image, asked in kept if asked is not None]
    if not pairs:
        raise ValueError("no prompt of the captioned world to score against")
    logits = model(as_batch([image for image, _ in pairs]))
    accuracy, confusion = {}, {}
    for name, values in KNOWN.items():
        seen = logits[name].argmax(dim=1).tolist()
        asked = [values.index(attributes[name]) for _, attributes in pairs]
        matrix = [[0] * len(values) for _ in values]
        for row, column in zip(asked, seen, strict=True):
            matrix[row][column] += 1
        confusion[name] = matrix
        accuracy[name] = sum(matrix[i][i] for i in range(len(values))) / len(pairs)
    return Adherence(accuracy=accuracy, confusion=confusion, images=len(pairs))
