"""Prompt → embeddings, with a bounded LRU cache keyed by (model, text). Plain torch."""

from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from serving.lru import LruCache
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
