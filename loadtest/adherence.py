"""`make bench-adherence`: how well a model draws what the captioned world's prompts ask for.

    python -m loadtest.adherence [--model DIR] [--seeds 4] [--steps N] [--guidance G]

Every caption of the world (24) with each seed, through the model's diffusers pipeline (the
service's images equal it within 1/255), scored by the world's evaluator: per attribute, the
share of images showing the prompt's colour, shape and background. Controls beside it: the
evaluator on the world's own held-out renders (near perfect), and on the model's images against
shuffled prompts and on noise (near chance). Without --model it scores the embedded default.
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

from serving.models.embedded import ensure_cached
from serving.settings import Settings
from serving.training.evaluator import (
    Adherence,
    AttributeClassifier,
    cached_evaluator,
    held_out_renders,
    score,
)
from serving.training.world import every_caption

HERE = Path(__file__).resolve().parent


def generate(
    model_dir: Path, prompts: list[str], seeds: int, steps: int | None, guidance: float | None
) -> tuple[list[np.ndarray], list[str]]:
    pipe = DiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    options: dict[str, Any] = {"output_type": "np"}
    if steps is not None:
        options["num_inference_steps"] = steps
    if guidance is not None:
        options["guidance_scale"] = guidance
    images, asked = [], []
    for seed in range(seeds):
        out = pipe(prompts, generator=torch.Generator().manual_seed(seed), **options).images
        images += [(image * 255).round().astype(np.uint8) for image in out]
        asked += prompts
    return images, asked


def row(name: str, result: Adherence) -> dict[str, Any]:
    return {"what": name, "images": result.images, **result.accuracy}


def run(
    model_dir: Path,
    seeds: int,
    steps: int | None,
    guidance: float | None,
    evaluator: AttributeClassifier | None = None,
) -> dict[str, Any]:
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
    return {
        "model": str(model_dir),
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
        f"{results['steps'] or 'default'}, guidance {results['guidance'] or 'default'}; "
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
    parser.add_argument("--model", type=Path, help="a diffusers directory (default: embedded)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu")
    parser.add_argument("--name", default="adherence", help="report file name (without suffix)")
    parser.add_argument("--command", help="how the model was made, for the report")
    args = parser.parse_args(argv)
    model_dir = args.model or ensure_cached(Settings().cache_dir)
    results = run(model_dir, args.seeds, args.steps, args.guidance)
    results["command"] = args.command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
