"""Tuning data: the validation split is stratified and refuses sources it cannot measure; each
strategy shows the model the mix it promises."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from serving.training.dataset import DatasetError, Example
from serving.training.mixing import order, source_weights, split

PIXEL = np.zeros((4, 4, 3), np.uint8)


def examples(source: str, counts: dict[str, int]) -> list[Example]:
    return [
        Example(PIXEL, f"{label} {index}", source, label)
        for label, count in counts.items()
        for index in range(count)
    ]


ORIGINAL = examples("original", {"circle": 40, "square": 40, "triangle": 40})
# A skewed batch: nine crosses to every circle.
NEW = examples("new", {"cross": 90, "circle": 10})


def test_validation_holds_every_source_and_class_and_training_never_sees_it() -> None:
    training, validation = split(ORIGINAL + NEW, fraction=0.1, seed=0)
    held = Counter((example.source, example.label) for example in validation)
    assert held == {
        ("original", "circle"): 4,
        ("original", "square"): 4,
        ("original", "triangle"): 4,
        ("new", "cross"): 9,
        ("new", "circle"): 1,
    }
    assert not {id(e) for e in training} & {id(e) for e in validation}
    assert len(training) + len(validation) == len(ORIGINAL + NEW)
    # Seeded: the same split every time.
    again, _ = split(ORIGINAL + NEW, fraction=0.1, seed=0)
    assert [e.text for e in again] == [e.text for e in training]


def test_a_source_too_small_to_validate_is_refused() -> None:
    lonely = examples("feedback-7", {"cross": 1, "circle": 1})
    with pytest.raises(DatasetError, match="source 'feedback-7' has 2 example"):
        split(ORIGINAL + lonely, fraction=0.1, seed=0)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"new": -1.0}, "must be ≥ 0"),
        ({"new": float("nan")}, "must be ≥ 0"),
        ({"original": 0.0, "new": 0.0}, "every source's weight is 0"),
        ({"nwe": 1.0}, r"unknown source\(s\) \['nwe'\]"),
    ],
)
def test_bad_weights_are_refused(given: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        source_weights(given, ["original", "new"])


def drawn(strategy: str, weights: dict[str, float], count: int = 4000) -> list[Example]:
    stream = order(strategy, ORIGINAL + NEW, ["new"], weights, seed=1)  # type: ignore[arg-type]
    return list(itertools.islice(stream, count))


def test_stratified_draws_classes_evenly_and_sources_by_weight_in_random_order() -> None:
    shown = drawn("stratified", {"original": 1.0, "new": 3.0})
    classes = Counter(example.label for example in shown)
    # The new batch is 90 % crosses, the original has none: every class a quarter.
    for label in ("circle", "square", "triangle", "cross"):
        assert classes[label] / len(shown) == pytest.approx(0.25, abs=0.03), classes
    # Circles, in both sources, come by weight: three new to one original.
    circles = Counter(example.source for example in shown if example.label == "circle")
    assert circles["new"] / classes["circle"] == pytest.approx(0.75, abs=0.05)
    # Not arrival order: the first 100 already mix both sources.
    assert {example.source for example in shown[:100]} == {"original", "new"}


def test_a_zero_weight_source_is_never_drawn() -> None:
    shown = drawn("stratified", {"original": 0.0, "new": 1.0}, count=500)
    assert {example.source for example in shown} == {"new"}


def test_concat_follows_arrival_and_new_only_never_replays() -> None:
    concat = drawn("concat", {"original": 1.0, "new": 1.0}, count=len(ORIGINAL) + len(NEW))
    assert [e.text for e in concat] == [e.text for e in ORIGINAL + NEW]
    new_only = drawn("new-only", {"original": 1.0, "new": 1.0}, count=300)
    assert {e.source for e in new_only} == {"new"}
    assert Counter(e.label for e in new_only[:100]) == {"cross": 90, "circle": 10}  # one epoch
