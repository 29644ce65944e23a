"""The world's evaluator, trained once per test session (about 30 s on 2 cores)."""

from __future__ import annotations

import pytest

from serving.training.evaluator import AttributeClassifier, cached_evaluator


@pytest.fixture(scope="session")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> AttributeClassifier:
    return cached_evaluator(tmp_path_factory.mktemp("evaluator"))
