"""The TextEncoder deployment: prompts → embeddings, request-batched, with an embedding cache."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from serving.engine.text import TextEncoderRunner
from serving.lru import CacheStats
from serving.metrics import cache_lookups
from serving.models import loader
from serving.models.device import choose_placement, configure_threads
from serving.settings import Settings
from serving.stages.batching import tune_batching


@serve.deployment(name="TextEncoder")
class TextEncoder:
    def __init__(self, settings: Settings) -> None:
        configure_threads(settings, settings.text_encoder)
        placement = choose_placement(settings)
        source = loader.resolve_model_source(settings)
        self._runner = TextEncoderRunner(
            loader.load_tokenizer(source),
            loader.load_text_encoder(source, placement),
            placement,
            model_id=source,
            cache_size=settings.embedding_cache_size,
        )
        self._lookups = cache_lookups()
        tune_batching(self.encode, settings.encoder_max_batch_size, settings.encoder_batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def encode(self, texts: list[str]) -> list[np.ndarray]:
        # One batch at a time (serve.batch's default), so the cache needs no lock.
        before = self._runner.cache.stats()
        embeddings = await asyncio.to_thread(self._runner.encode, texts)
        after = self._runner.cache.stats()
        for result, count in (
            ("hit", after.hits - before.hits),
            ("miss", after.misses - before.misses),
        ):
            if count:
                self._lookups.inc(count, tags={"cache": "embedding", "result": result})
        return embeddings

    def cache_stats(self) -> CacheStats:
        return self._runner.cache.stats()

    def ready(self) -> bool:
        return True
