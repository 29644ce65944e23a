"""The captioned world: coloured shapes on plain backgrounds, drawn and captioned by this code.

Seeded and deterministic: the same seed gives the same scenes on every machine. Each scene is one
shape (circle, square, triangle) of one colour on a white or black background, at a random size
and position; its caption says the three attributes in plain English ("a red circle on a white
background"). `write_dataset` writes the layout text-to-image training tools read (a `datasets`
imagefolder: images beside a `metadata.jsonl` with `file_name` and `text`), plus the attributes
and a `source` column, so real data fits the same tools.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SOURCE = "sd-serving-world-v1"
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
}
# A concept the demo model never saw: the tuning scenario's new data brings it (`sd-serving
# tune`). The evaluator tells it apart from the start; the world's own scenes never draw it. (No
# new colour: the demo VAE, trained on four, brings any other back as one of them, e.g. purple
# as green, so a new colour would need the VAE tuned too.)
NEW_SHAPES = ("cross",)
KNOWN: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES + NEW_SHAPES,
    "background": tuple(BACKGROUNDS),
}
NEW_SOURCE = "sd-serving-world-new-concepts"
# Drawn this many times larger, then downsampled: smooth edges, as a photo of a shape has.
SUPERSAMPLE = 4
_CAPTION = re.compile(r"^an? (\w+) (\w+) on an? (\w+) background$")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    radius: float  # of the shape's bounding circle, as a fraction of the image side
    centre: tuple[float, float]  # fractions of the image side

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)

    @property
    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape, "background": self.background}


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def every_caption() -> list[str]:
    """The world's 24 captions, in a fixed order."""
    return [caption(**attributes) for attributes in combinations()]


def combinations(
    colours: Iterable[str] = COLOURS,
    shapes: Iterable[str] = SHAPES,
    backgrounds: Iterable[str] = BACKGROUNDS,
) -> list[dict[str, str]]:
    """Every (colour, shape, background) of the given values, colour slowest."""
    return [
        {"colour": colour, "shape": shape, "background": background}
        for colour in colours
        for shape in shapes
        for background in backgrounds
    ]


def new_concepts() -> list[dict[str, str]]:
    """The tuning scenario's new batch, skewed: the cross in every colour and background, listed
    three times, beside yellow circles, squares and triangles, so four in five of its scenes are
    crosses."""
    crosses = combinations(shapes=NEW_SHAPES)
    return crosses * 3 + combinations(colours=["yellow"])


def parse_caption(text: str) -> dict[str, str] | None:
    """A caption's attributes (the world's or its new concepts'), or None for other text."""
    match = _CAPTION.match(text.strip().lower())
    if match is None:
        return None
    attributes = dict(zip(KNOWN, match.groups(), strict=True))
    if any(value not in KNOWN[name] for name, value in attributes.items()):
        return None
    return attributes


def scenes(
    count: int, seed: int, drawn_from: Sequence[dict[str, str]] | None = None
) -> Iterator[Scene]:
    """`count` scenes; the attributes cycle through `drawn_from` (default: the world's every
    combination) in a seeded order, so any 24 consecutive world scenes hold each caption once.
    A combination listed twice is drawn twice as often."""
    rng = np.random.default_rng(seed)
    pool = list(drawn_from) if drawn_from is not None else combinations()
    order: list[int] = []
    for _ in range(count):
        if not order:
            order = list(rng.permutation(len(pool)))
        attributes = pool[order.pop()]
        radius = float(rng.uniform(0.18, 0.32))
        centre = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
        yield Scene(**attributes, radius=radius, centre=centre)


def batches(
    batch_size: int, size: int, seed: int, drawn_from: Sequence[dict[str, str]] | None = None
) -> Iterator[tuple[list[Scene], np.ndarray]]:
    """Endless batches of fresh scenes (`scenes(…, seed, drawn_from)` in order) and their
    renders, [batch_size, size, size, 3] uint8."""
    drawn = scenes(2**62, seed, drawn_from)
    while True:
        batch = [next(drawn) for _ in range(batch_size)]
        yield batch, np.stack([np.asarray(render(scene, size)) for scene in batch])


def render(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of `size` x `size` pixels."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, r = scene.centre[0] * big, scene.centre[1] * big, scene.radius * big
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        half = r / np.sqrt(2) * 1.2  # about the circle's area
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "cross":  # an upright plus sign, arms a third of its span wide
        arm = r * 0.9 / 3
        draw.rectangle((cx - r * 0.9, cy - arm, cx + r * 0.9, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - r * 0.9, cx + arm, cy + r * 0.9), fill=fill)
    else:  # an upright equilateral triangle inscribed in the circle
        points = [
            (cx + r * np.cos(angle), cy - r * np.sin(angle))
            for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)
        ]
        draw.polygon(points, fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_dataset(
    directory: Path,
    count: int,
    seed: int,
    size: int = 64,
    drawn_from: Sequence[dict[str, str]] | None = None,
    source: str = SOURCE,
) -> Path:
    """An imagefolder dataset of `count` scenes: images/NNNNNN.png and metadata.jsonl."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    with (directory / "metadata.jsonl").open("w") as metadata:
        for index, scene in enumerate(scenes(count, seed, drawn_from)):
            name = f"images/{index:06d}.png"
            render(scene, size).save(directory / name)
            row = {"file_name": name, "text": scene.caption, **scene.attributes, "source": source}
            metadata.write(json.dumps(row) + "\n")
    return directory
