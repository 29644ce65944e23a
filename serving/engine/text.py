"""Prompt → embeddings, with a bounded LRU cache keyed by (model, text). Plain torch."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from serving.models.device import Placement


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    capacity: int


class EmbeddingCache:
    """Least-recently-used map from (model, text) to embeddings; capacity 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: np.ndarray) -> None:
        if self._capacity == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._entries), self._capacity)


class TextEncoderRunner:
    """Encodes prompts exactly as StableDiffusionPipeline.encode_prompt does (no clip skip)."""

    def __init__(
        self,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        placement: Placement,
        *,
        model_id: str,
        cache_size: int,
    ) -> None:
        self._tokenizer = tokenizer
        self._encoder = text_encoder
        self._placement = placement
        self._model_id = model_id
        self.cache = EmbeddingCache(cache_size)
        self._use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One [tokens, dim] float32 array per text; cache misses go through one forward."""
        results: list[np.ndarray | None] = [self.cache.get((self._model_id, t)) for t in texts]
        missing = list(dict.fromkeys(t for t, r in zip(texts, results, strict=True) if r is None))
        if missing:
            fresh = dict(zip(missing, self._forward(missing), strict=True))
            for text, embeds in fresh.items():
                self.cache.put((self._model_id, text), embeds)
            results = [
                r if r is not None else fresh[t] for t, r in zip(texts, results, strict=True)
            ]
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> list[np.ndarray]:
        inputs = self._tokenizer(
            texts,
            padding="max_length",
            max_length=self._tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self._placement.device
        mask = inputs.attention_mask.to(device) if self._use_mask else None
        hidden = self._encoder(inputs.input_ids.to(device), attention_mask=mask)[0]
        as_float = hidden.float().cpu().numpy()
        return list(as_float)
