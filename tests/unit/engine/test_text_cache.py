"""The text-embedding cache: hits, misses, LRU eviction, and cached equals fresh."""

from __future__ import annotations

import numpy as np

from serving.engine.text import EmbeddingCache
from tests.helpers.engine import Components


def test_lru_evicts_the_least_recently_used() -> None:
    cache = EmbeddingCache(capacity=2)
    a, b, c = (np.full(2, v) for v in (1.0, 2.0, 3.0))
    cache.put(("m", "a", ()), a)
    cache.put(("m", "b", ()), b)
    assert cache.get(("m", "a", ())) is a  # a is now the most recent
    cache.put(("m", "c", ()), c)
    assert cache.get(("m", "b", ())) is None
    assert cache.get(("m", "a", ())) is a and cache.get(("m", "c", ())) is c
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size, stats.capacity) == (3, 1, 2, 2)


def test_keys_include_the_model_and_the_adapters() -> None:
    cache = EmbeddingCache(capacity=4)
    cache.put(("model-a", "text", ()), np.zeros(1))
    assert cache.get(("model-b", "text", ())) is None
    assert cache.get(("model-a", "text", (("style-a", 1.0),))) is None


def test_cached_embeddings_equal_a_fresh_forward(components: Components) -> None:
    runner = components.text
    before = runner.cache.stats()
    first = runner.encode(["a unique prompt for the cache test", "another one"])
    second = runner.encode(["a unique prompt for the cache test"])
    after = runner.cache.stats()
    assert after.misses - before.misses == 2 and after.hits - before.hits == 1
    assert np.array_equal(first[0].hidden, second[0].hidden)
    assert first[0].hidden.shape == (77, 256) and first[0].pooled is None
