"""The adherence evaluator and its controls: near perfect on the world's own held-out images,
near chance on noise, on images scored against shuffled prompts, and on the random-weight
embedded model's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from serving.training.evaluator import (
    AttributeClassifier,
    draw,
    held_out_renders,
    score,
)
from serving.training.world import (
    ATTRIBUTES,
    KNOWN,
    NEW_SHAPES,
    combinations,
    every_caption,
)

CHANCE = {name: 1 / len(values) for name, values in ATTRIBUTES.items()}
# 240 balanced prompts: a prompt-blind classifier scores chance exactly; allow sampling noise.
NEAR_CHANCE = 0.12


@pytest.fixture(scope="module")
def held_out() -> tuple[list[np.ndarray], list[str]]:
    return held_out_renders()


def test_near_perfect_on_held_out_renders(
    evaluator: AttributeClassifier, held_out: tuple[list[np.ndarray], list[str]]
) -> None:
    result = score(evaluator, *held_out)
    assert result.images == 240
    assert min(result.accuracy.values()) >= 0.97, result.summary()
    for name, matrix in result.confusion.items():
        assert sum(map(sum, matrix)) == 240 and len(matrix) == len(KNOWN[name])


def test_near_perfect_on_the_new_concept_too(evaluator: AttributeClassifier) -> None:
    """The tuning scenario's cross, which the demo model never saw."""
    new = combinations(shapes=NEW_SHAPES)
    result = score(evaluator, *held_out_renders(120, drawn_from=new))
    assert min(result.accuracy.values()) >= 0.97, result.summary()


def test_near_chance_on_noise_and_on_shuffled_prompts(
    evaluator: AttributeClassifier, held_out: tuple[list[np.ndarray], list[str]]
) -> None:
    images, prompts = held_out
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, image.shape, dtype=np.uint8) for image in images]
    shuffled = list(np.roll(prompts, 7))  # a derangement with the same balance
    for control in (score(evaluator, noise, prompts), score(evaluator, images, shuffled)):
        for name, accuracy in control.accuracy.items():
            assert accuracy <= CHANCE[name] + NEAR_CHANCE, control.summary()


def test_near_chance_on_the_random_weight_models_images(
    evaluator: AttributeClassifier, embedded_model_dir: Path
) -> None:
    prompts = every_caption()
    pipe = StableDiffusionPipeline.from_pretrained(embedded_model_dir)
    result = score(evaluator, draw(pipe, prompts, seed=0, steps=4, guidance=7.5), prompts)
    # 24 prompts only (one of each): a wider margin than above.
    assert result.accuracy["colour"] <= CHANCE["colour"] + 0.25, result.summary()
    assert result.accuracy["shape"] <= CHANCE["shape"] + 0.25, result.summary()


def test_prompts_outside_the_world_cannot_be_scored(evaluator: AttributeClassifier) -> None:
    with pytest.raises(ValueError, match="captioned world"):
        score(evaluator, [np.zeros((64, 64, 3), np.uint8)], ["an astronaut riding a horse"])


def test_the_adherence_benchmark_reports_the_model_and_its_controls(
    evaluator: AttributeClassifier, embedded_model_dir: Path
) -> None:
    """`make bench-adherence` at a reduced size: one seed, two steps."""
    from loadtest.adherence import markdown, run

    results = run(
        embedded_model_dir,
        seeds=1,
        steps=2,
        guidance=7.5,
        evaluator=evaluator,
        random_model=embedded_model_dir,
    )
    assert results.pop("sheet").size == (8 * 160, 160 + 30)  # the README's picture
    rows = {row["what"]: row for row in results["rows"]}
    assert rows["the model's images vs their prompts"]["images"] == 24
    assert rows["control: the world's held-out renders"]["shape"] >= 0.97
    assert rows["control: noise"]["colour"] <= CHANCE["colour"] + NEAR_CHANCE
    assert "| control: noise | 24 |" in markdown(results)
    assert rows["control: a random-weight model's images"]["images"] == 24
