"""The captioned world: deterministic, captioned as drawn, in the imagefolder layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from serving.training.world import (
    SOURCE,
    every_caption,
    parse_caption,
    render,
    scenes,
    write_dataset,
)


def digest(directory: Path) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_the_same_seed_writes_the_same_dataset(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", count=30, seed=4)
    again = write_dataset(tmp_path / "b", count=30, seed=4)
    other = write_dataset(tmp_path / "c", count=30, seed=5)
    assert digest(first) == digest(again) != digest(other)


def test_rows_name_their_image_caption_attributes_and_source(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path / "world", count=24, seed=1, size=32)
    rows = [json.loads(line) for line in (directory / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    assert sorted(row["text"] for row in rows) == sorted(every_caption())  # each caption once
    for row in rows:
        assert (directory / row["file_name"]).is_file() and row["source"] == SOURCE
        assert parse_caption(row["text"]) == {
            key: row[key] for key in ("colour", "shape", "background")
        }


def test_an_image_shows_its_caption() -> None:
    """The shape's colour is in the middle of a shape-centred crop; the corners are background."""
    for scene in scenes(24, seed=2):
        image = np.asarray(render(scene, 64)).astype(int)
        cx, cy = round(scene.centre[0] * 63), round(scene.centre[1] * 63)
        colour = {"red": 0, "green": 1, "blue": 2}.get(scene.colour)
        if colour is not None:
            assert image[cy, cx].argmax() == colour, scene
        background = 255 if scene.background == "white" else 0
        corners = [image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]]
        assert any(np.abs(c - background).max() < 8 for c in corners), scene


def test_text_outside_the_world_has_no_attributes() -> None:
    assert parse_caption("A Blue Triangle on a black background") == {
        "colour": "blue",
        "shape": "triangle",
        "background": "black",
    }
    assert parse_caption("a pink circle on a white background") is None
    assert parse_caption("an astronaut riding a horse") is None
