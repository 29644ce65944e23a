"""Prompt → embeddings, with a bounded LRU cache keyed by (model, text). Plain torch."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchEncoding, CLIPTokenizer

from serving.dataplane.stages import TextEmbedding
from serving.lru import LruCache
from serving.metrics import Counter
from serving.models import loader
from serving.models.device import Placement

# Least-recently-used map from (model, text) to the prompt's embeddings.
EmbeddingCache = LruCache[tuple[str, str], TextEmbedding]


class TextEncoderRunner:
    """Encodes prompts exactly as the diffusers pipelines' `encode_prompt` does (no clip skip):
    one encoder's last hidden states (SD 1.x/2.x), or two encoders' penultimate hidden states
    side by side and the second's pooled projection (SDXL)."""

    def __init__(
        self,
        tokenizers: list[CLIPTokenizer],
        text_encoders: list[torch.nn.Module],
        placement: Placement,
        *,
        model_id: str,
        cache_size: int,
        lookups: Counter | None = None,
    ) -> None:
        self._tokenizers = tokenizers
        self._encoders = text_encoders
        self._placement = placement
        self._model_id = model_id
        self.cache = EmbeddingCache(cache_size)
        self._lookups = lookups
        self._use_mask = bool(getattr(text_encoders[0].config, "use_attention_mask", False))

    @classmethod
    def load(
        cls, source: str, placement: Placement, *, cache_size: int, lookups: Counter | None = None
    ) -> TextEncoderRunner:
        """The tokenizers and text encoders of a diffusers directory."""
        return cls(
            loader.load_tokenizers(source),
            loader.load_text_encoders(source, placement),
            placement,
            model_id=source,
            cache_size=cache_size,
            lookups=lookups,
        )

    @property
    def pooled(self) -> bool:
        """Whether the model takes a pooled text embedding (SDXL)."""
        return len(self._encoders) > 1

    def encode(self, texts: list[str]) -> list[TextEmbedding]:
        """One embedding per text; cache misses go through one forward. Not thread-safe: one
        batch at a time."""
        results: list[TextEmbedding | None] = [self.cache.get((self._model_id, t)) for t in texts]
        if self._lookups is not None:
            hits = sum(result is not None for result in results)
            for outcome, count in (("hit", hits), ("miss", len(texts) - hits)):
                if count:  # Ray's counters refuse an increment of 0
                    self._lookups.inc(count, tags={"cache": "embedding", "result": outcome})
        missing = list(dict.fromkeys(t for t, r in zip(texts, results, strict=True) if r is None))
        if missing:
            fresh = dict(zip(missing, self._forward(missing), strict=True))
            for text, embedding in fresh.items():
                self.cache.put((self._model_id, text), embedding)
            results = [
                r if r is not None else fresh[t] for t, r in zip(texts, results, strict=True)
            ]
        return [r for r in results if r is not None]

    def _tokens(self, tokenizer: CLIPTokenizer, texts: list[str]) -> BatchEncoding:
        return tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> list[TextEmbedding]:
        device = self._placement.device
        if not self.pooled:
            inputs = self._tokens(self._tokenizers[0], texts)
            mask = inputs.attention_mask.to(device) if self._use_mask else None
            hidden = self._encoders[0](inputs.input_ids.to(device), attention_mask=mask)[0]
            return [TextEmbedding(row) for row in _numpy(hidden)]
        hidden_states, pooled = [], None
        for tokenizer, encoder in zip(self._tokenizers, self._encoders, strict=True):
            output = encoder(
                self._tokens(tokenizer, texts).input_ids.to(device), output_hidden_states=True
            )
            pooled = output[0]  # the last encoder's projection (text_embeds) is what is kept
            hidden_states.append(output.hidden_states[-2])
        hidden = torch.cat(hidden_states, dim=-1)
        assert pooled is not None and pooled.ndim == 2
        return [
            TextEmbedding(row, pooled_row)
            for row, pooled_row in zip(_numpy(hidden), _numpy(pooled), strict=True)
        ]


def _numpy(tensor: torch.Tensor) -> list[np.ndarray]:
    return list(tensor.float().cpu().numpy())
