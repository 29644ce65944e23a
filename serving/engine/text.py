"""Prompt → embeddings, with a bounded LRU cache keyed by (model, text). Plain torch."""

from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from serving.lru import LruCache
from serving.metrics import Counter
from serving.models import loader
from serving.models.device import Placement

# Least-recently-used map from (model, text) to [tokens, dim] embeddings.
EmbeddingCache = LruCache[tuple[str, str], np.ndarray]


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
        lookups: Counter | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._encoder = text_encoder
        self._placement = placement
        self._model_id = model_id
        self.cache = EmbeddingCache(cache_size)
        self._lookups = lookups
        self._use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    @classmethod
    def load(
        cls, source: str, placement: Placement, *, cache_size: int, lookups: Counter | None = None
    ) -> TextEncoderRunner:
        """The tokenizer and text encoder of a diffusers directory."""
        return cls(
            loader.load_tokenizer(source),
            loader.load_text_encoder(source, placement),
            placement,
            model_id=source,
            cache_size=cache_size,
            lookups=lookups,
        )

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One [tokens, dim] float32 array per text; cache misses go through one forward.
        Not thread-safe: one batch at a time."""
        results: list[np.ndarray | None] = [self.cache.get((self._model_id, t)) for t in texts]
        if self._lookups is not None:
            hits = sum(result is not None for result in results)
            for outcome, count in (("hit", hits), ("miss", len(texts) - hits)):
                if count:  # Ray's counters refuse an increment of 0
                    self._lookups.inc(count, tags={"cache": "embedding", "result": outcome})
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
