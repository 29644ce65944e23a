"""`make bench-adherence`: how well a model draws what the captioned world's prompts ask for.

    python -m loadtest.adherence [--model DIR] [--seeds 4] [--steps 20] [--guidance 7.5]

Every caption of the world (24) with each seed, through the model's diffusers pipeline (the
service's images equal it within 1/255) at the service's default steps and guidance, scored by
the world's evaluator: per attribute, the share of images showing the prompt's colour, shape and
background. Controls beside it: the evaluator on the world's own held-out renders (near perfect),
and on the model's images against shuffled prompts, on noise and on the random-weight
`embedded-sd` model's images (near chance). Without --model it scores the service's default
model, the trained demo model. Writes a report (.md, .json) and the README's picture (.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw, ImageFont

from serving.dataplane.model import GUIDANCE, STEPS
from serving.models.embedded import DEFAULT_SOURCE, ensure_cached
from serving.models.loader import resolve_source
from serving.settings import Settings
from serving.training.evaluator import (
    Adherence,
    AttributeClassifier,
    cached_evaluator,
    draw,
    held_out_renders,
    score,
)
from serving.training.world import every_caption

HERE = Path(__file__).resolve().parent
# The README's picture: eight captions covering every colour, shape and background.
PICTURED = [
    "a red circle on a white background",
    "a blue triangle on a black background",
    "a yellow square on a white background",
    "a green circle on a black background",
    "a blue square on a white background",
    "a red triangle on a black background",
    "a green triangle on a white background",
    "a yellow circle on a black background",
]


def generate(
    model_dir: Path, prompts: list[str], seeds: int, steps: int, guidance: float
) -> tuple[list[np.ndarray], list[str]]:
    pipe = DiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    images, asked = [], []
    for seed in range(seeds):
        images += draw(pipe, prompts, seed, steps, guidance)
        asked += prompts
    return images, asked


def contact_sheet(images: list[np.ndarray], prompts: list[str], tile: int = 160) -> Image.Image:
    """The pictured captions' first images (seed 0), enlarged, each over its caption."""
    caption_height = 30
    sheet = Image.new("RGB", (tile * len(PICTURED), tile + caption_height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for column, prompt in enumerate(PICTURED):
        image = Image.fromarray(images[prompts.index(prompt)])
        sheet.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (column * tile, 0))
        words = prompt.removeprefix("a ").split(" on a ")
        for line, text in enumerate((words[0], "on " + words[1])):
            draw.text((column * tile + 6, tile + 2 + 13 * line), text, fill="black", font=font)
    return sheet


def _shown(path: Path) -> str:
    """A path inside the repository relative to it (reports are committed), others as given."""
    resolved = path.resolve()
    return (
        str(resolved.relative_to(HERE.parent))
        if resolved.is_relative_to(HERE.parent)
        else str(path)
    )


def row(name: str, result: Adherence) -> dict[str, Any]:
    return {"what": name, "images": result.images, **result.accuracy}


def run(
    model_dir: Path,
    seeds: int,
    steps: int,
    guidance: float,
    evaluator: AttributeClassifier | None = None,
    random_model: Path | None = None,
) -> dict[str, Any]:
    """`random_model`: a random-weight model of the same architecture family, scored as a
    control (it cannot draw the prompt)."""
    evaluator = evaluator or cached_evaluator(Settings().cache_dir)
    prompts = every_caption()
    started = time.monotonic()
    images, asked = generate(model_dir, prompts, seeds, steps, guidance)
    generated_s = time.monotonic() - started
    renders, captions = held_out_renders()
    noise = np.random.default_rng(0).integers(0, 256, (len(images), *images[0].shape), np.uint8)
    model = score(evaluator, images, asked)
    controls = {
        "control: the world's held-out renders": score(evaluator, renders, captions),
        # A seeded permutation: a fixed offset in the captions' order (colour-major) would pair
        # every image with another colour and background, not a chance one.
        "control: the model's images vs shuffled prompts": score(
            evaluator, images, list(np.random.default_rng(1).permutation(asked))
        ),
        "control: noise": score(evaluator, list(noise), asked),
    }
    if random_model is not None:
        untrained, _ = generate(random_model, prompts, seeds, steps, guidance)
        controls["control: a random-weight model's images"] = score(evaluator, untrained, asked)
    return {
        "sheet": contact_sheet(images, asked),
        "model": _shown(model_dir),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "generation_s": generated_s,
        "confusion": model.confusion,
        "rows": [row("the model's images vs their prompts", model)]
        + [row(name, result) for name, result in controls.items()],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Prompt adherence in the captioned world",
        "",
        f"Model `{results['model']}`, every caption x {results['seeds']} seeds, steps "
        f"{results['steps']}, guidance {results['guidance']}; "
        f"{results['date']}. Goal for the trained demo model: colour ≥ 95 %, shape ≥ 85 %.",
        "",
        "| images | count | colour | shape | background |",
        "|---|---|---|---|---|",
    ]
    for entry in results["rows"]:
        lines.append(
            f"| {entry['what']} | {entry['images']} | {entry['colour']:.0%} | "
            f"{entry['shape']:.0%} | {entry['background']:.0%} |"
        )
    lines += ["", "Chance: colour 25 %, shape 33 %, background 50 %."]
    if results.get("command"):
        lines += ["", f"Reproduce: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.adherence", description=__doc__)
    parser.add_argument(
        "--model", type=Path, help="a diffusers directory (default: the demo model)"
    )
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument(
        "--steps", type=int, default=STEPS, help="the service's default: %(default)s"
    )
    parser.add_argument(
        "--guidance", type=float, default=GUIDANCE["sd"], help="the service's default: %(default)s"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu")
    parser.add_argument("--name", default="adherence", help="report file name (without suffix)")
    parser.add_argument("--command", help="how the model was made, for the report")
    args = parser.parse_args(argv)
    settings = Settings()
    model_dir = args.model or Path(resolve_source(DEFAULT_SOURCE, settings))
    random_model = ensure_cached(settings.cache_dir, "sd")  # embedded-sd
    results = run(model_dir, args.seeds, args.steps, args.guidance, random_model=random_model)
    results["command"] = args.command
    args.out.mkdir(parents=True, exist_ok=True)
    results.pop("sheet").save(args.out / f"{args.name}.png")
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
