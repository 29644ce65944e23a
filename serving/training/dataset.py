"""Imagefolder datasets as text-to-image training tools read them: images beside a
`metadata.jsonl` whose rows name their `file_name` and caption (`text`), and, for tuning, the
`source` batch they came from and optionally their `class`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from serving.training.world import parse_caption


class DatasetError(ValueError):
    """A dataset that cannot be read, naming the file and row."""


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # [size, size, 3] uint8
    text: str
    source: str  # the batch it arrived in ("" where the dataset has no source column)
    label: str  # its class: the `class` column, else the world caption's shape, else ""


def read_examples(
    directory: Path, size: int, required: tuple[str, ...] = ("file_name", "text")
) -> list[Example]:
    """Every row of `metadata.jsonl`, its image resized to `size`; `required`: the string
    columns each row must have."""
    metadata = directory / "metadata.jsonl"
    if not metadata.is_file():
        raise DatasetError(f"{metadata}: missing (an imagefolder dataset needs metadata.jsonl)")
    examples = []
    for number, line in enumerate(metadata.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{metadata} row {number}: not JSON ({error.msg})") from None
        # An empty caption is a caption (the unconditional one); an empty name or source is not.
        missing = [
            key
            for key in required
            if not isinstance(row.get(key), str) or (key != "text" and not row[key])
        ]
        if missing:
            raise DatasetError(f"{metadata} row {number}: no {', '.join(missing)}")
        path = directory / row["file_name"]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size)))
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path} (row {number}): unreadable image ({error})") from None
        world = parse_caption(row["text"])
        label = row.get("class") or (world["shape"] if world else "")
        examples.append(Example(pixels, row["text"], row.get("source") or "", str(label)))
    if not examples:
        raise DatasetError(f"{metadata}: no rows")
    return examples


def pixels(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 images as a training batch: [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def digest(directory: Path) -> str:
    """sha256 of the dataset: its metadata and every file it names, in row order."""
    metadata = directory / "metadata.jsonl"
    hasher = hashlib.sha256(metadata.read_bytes())
    for line in metadata.read_text().splitlines():
        hasher.update((directory / json.loads(line)["file_name"]).read_bytes())
    return hasher.hexdigest()
