"""The TextEncoder deployment: prompts → embeddings, request-batched, with an embedding cache."""

from __future__ import annotations

import asyncio

from ray import serve

from serving.dataplane.stages import TextEmbedding
from serving.deployments._replica import RayMeter, prepare_replica, tune_batching
from serving.engine.lora import text_adapters_from_settings
from serving.engine.text import Loras, TextEncoderRunner
from serving.errors import InvalidArgument
from serving.metrics import cache_lookups
from serving.settings import Settings, TextEncoderStage


@serve.deployment(name="TextEncoder")
class TextEncoder:
    def __init__(self, settings: Settings, model: str) -> None:
        stage, placement, source, _ = prepare_replica(settings, "text_encoder", model)
        assert isinstance(stage, TextEncoderStage)
        self._runner = TextEncoderRunner.load(
            source,
            placement,
            cache_size=stage.cache_size,
            lookups=cache_lookups(RayMeter()),
            adapters=text_adapters_from_settings(settings, stage, source, RayMeter()),
        )
        tune_batching(self.encode, stage.max_batch_size, stage.batch_wait_s)

    @serve.batch
    async def encode(self, items: list[tuple[str, Loras]]) -> list[TextEmbedding | InvalidArgument]:
        """Each (prompt, its LoRA adapters with text-encoder weights); an adapter that does not
        load is the answer of its own prompts only (a value: raised, it would fail the whole
        batch). One batch at a time (serve.batch's default), so the cache needs no lock."""
        texts = [text for text, _ in items]
        loras = [adapters for _, adapters in items]
        return await asyncio.to_thread(self._runner.encode_each, texts, loras)

    def ready(self) -> bool:
        return True
