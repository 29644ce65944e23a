"""How tuning data is split and mixed: a validation set stratified by source and class, split off
before any training, and the order in which each strategy shows the rest to the model.

* `new-only`: the new batches alone, shuffled (the naive fine-tune; forgets the original).
* `concat`: everything, in arrival order (the original, then each batch as it came).
* `stratified` (the default): every class equally often, whatever each batch's class balance
  (a new concept is one class among the old: neither drowned by the old classes nor crowding
  them out), and within a class the sources that have it by their weights (the original's
  weight is its replay share of the classes it shares with the new data); drawn at random, so
  the order never follows arrival. torch's `WeightedRandomSampler` does the drawing.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from serving.training.dataset import DatasetError, Example, pixels

Strategy = Literal["new-only", "concat", "stratified"]
STRATEGIES: tuple[Strategy, ...] = ("new-only", "concat", "stratified")


def split(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(training, validation): from every (source, class) of two or more examples, `fraction`
    of them (at least one) held out. A source left without validation or training examples is
    refused: its adherence could not be measured, or it would not be learnt."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for example in examples:
        groups[(example.source, example.label)].append(example)
    rng = np.random.default_rng(seed)
    training: list[Example] = []
    validation: list[Example] = []
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        held = max(1, round(fraction * len(group))) if len(group) > 1 else 0
        validation += [group[i] for i in order[:held]]
        training += [group[i] for i in order[held:]]
    for source, count in Counter(example.source for example in examples).items():
        if not any(example.source == source for example in validation):
            raise DatasetError(
                f"source {source!r} has {count} example(s) and no class with two: too few to "
                "keep any for validation (add examples, or merge it into another batch)"
            )
    return training, validation


def source_weights(given: Mapping[str, float], sources: Sequence[str]) -> dict[str, float]:
    """Every source's mixing weight: as given, else 1. Negative, unknown or all-zero weights
    are refused."""
    unknown = sorted(set(given) - set(sources))
    if unknown:
        raise ValueError(f"weight for unknown source(s) {unknown}; the sources are {list(sources)}")
    negative = sorted(
        name for name, weight in given.items() if not (weight >= 0 and math.isfinite(weight))
    )
    if negative:
        raise ValueError(f"weights must be ≥ 0 (and finite); {negative} are not")
    weights = {source: float(given.get(source, 1.0)) for source in sources}
    if not any(weights.values()):
        raise ValueError("every source's weight is 0: nothing would be trained on")
    return weights


def order(
    strategy: Strategy,
    training: Sequence[Example],
    new_sources: Sequence[str],
    weights: Mapping[str, float],
    seed: int,
) -> Iterator[Example]:
    """The endless stream of training examples that `strategy` shows the model."""
    generator = torch.Generator().manual_seed(seed)
    if strategy == "concat":
        while True:  # `training` is in arrival order already
            yield from training
    if strategy == "new-only":
        pool = [example for example in training if example.source in new_sources]
        if not pool:
            raise DatasetError("new-only: the new batches have no training examples")
        while True:
            for index in torch.randperm(len(pool), generator=generator).tolist():
                yield pool[index]
    yield from _stratified(training, weights, generator)


def _stratified(
    training: Sequence[Example], weights: Mapping[str, float], generator: torch.Generator
) -> Iterator[Example]:
    """Every class drawn equally often (a new concept is one class among the old ones, however
    many or few of it a batch holds); within a class, the sources that have it by `weights`;
    within a source's class, every example alike."""
    per_group = Counter((example.source, example.label) for example in training)
    weight_in_class: dict[str, float] = defaultdict(float)
    for source, label in per_group:
        weight_in_class[label] += weights[source]
    classes = [label for label, weight in weight_in_class.items() if weight > 0]
    row_weights = [
        weights[e.source] / weight_in_class[e.label] / len(classes) / per_group[(e.source, e.label)]
        if weight_in_class[e.label] > 0
        else 0.0
        for e in training
    ]
    sampler = WeightedRandomSampler(row_weights, num_samples=4096, generator=generator)
    while True:
        for index in sampler:
            yield training[index]


def batches(stream: Iterator[Example], batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """The stream in batches: pixels in [-1, 1] [N, 3, H, W] and captions."""
    while True:
        chosen = [next(stream) for _ in range(batch_size)]
        images = np.stack([example.image for example in chosen])
        yield pixels(images), [example.text for example in chosen]
