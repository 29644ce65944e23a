"""Prompt → embeddings, with a bounded LRU cache keyed by (model, text, LoRA adapters). Plain
torch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from transformers import BatchEncoding, CLIPTokenizer

from serving.dataplane.stages import TextEmbedding
from serving.engine.lora import RowAdapters
from serving.errors import InvalidArgument
from serving.lru import LruCache
from serving.metrics import Counter
from serving.models import loader
from serving.models.device import Placement
from serving.models.loras import LoraError

# A prompt's LoRA adapters with text-encoder weights: (name, scale) pairs.
Loras = tuple[tuple[str, float], ...]
# Least-recently-used map from (model, text, adapters) to the prompt's embeddings.
EmbeddingCache = LruCache[tuple[str, str, Loras], TextEmbedding]


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
        adapters: Callable[[list[torch.nn.Module]], list[RowAdapters]] | None = None,
    ) -> None:
        self._tokenizers = tokenizers
        # Each encoder's LoRA adapters, applied per prompt (row) like the UNet's.
        self._adapters = None if adapters is None else adapters(text_encoders)
        self._encoders = text_encoders
        self._placement = placement
        self._model_id = model_id
        self.cache = EmbeddingCache(cache_size)
        self._lookups = lookups
        self._use_mask = bool(getattr(text_encoders[0].config, "use_attention_mask", False))

    @classmethod
    def load(
        cls,
        source: str,
        placement: Placement,
        *,
        cache_size: int,
        lookups: Counter | None = None,
        adapters: Callable[[list[torch.nn.Module]], list[RowAdapters]] | None = None,
    ) -> TextEncoderRunner:
        """The tokenizers and text encoders of a diffusers directory."""
        return cls(
            loader.load_tokenizers(source),
            loader.load_text_encoders(source, placement),
            placement,
            model_id=source,
            cache_size=cache_size,
            lookups=lookups,
            adapters=adapters,
        )

    @property
    def pooled(self) -> bool:
        """Whether the model takes a pooled text embedding (SDXL)."""
        return len(self._encoders) > 1

    def encode(self, texts: list[str]) -> list[TextEmbedding]:
        """One embedding per text, without adapters. Not thread-safe: one batch at a time."""
        results = self.encode_each(texts, [()] * len(texts))
        return [result for result in results if isinstance(result, TextEmbedding)]

    def encode_each(
        self, texts: list[str], loras: list[Loras]
    ) -> list[TextEmbedding | InvalidArgument]:
        """One embedding per text, text i under LoRA adapters `loras[i]`; cache misses go
        through one forward. A text whose adapters do not load gets InvalidArgument naming
        `loras` in its place, and the batch's other texts are encoded. Not thread-safe."""
        keys = [
            (self._model_id, text, adapters) for text, adapters in zip(texts, loras, strict=True)
        ]
        results: list[TextEmbedding | InvalidArgument | None] = [self.cache.get(k) for k in keys]
        if self._lookups is not None:
            hits = sum(result is not None for result in results)
            for outcome, count in (("hit", hits), ("miss", len(texts) - hits)):
                if count:  # Ray's counters refuse an increment of 0
                    self._lookups.inc(count, tags={"cache": "embedding", "result": outcome})
        missing = list(dict.fromkeys(k for k, r in zip(keys, results, strict=True) if r is None))
        if missing:
            fresh = self._forward_with_adapters(missing)
            for key, embedding in fresh.items():
                if isinstance(embedding, TextEmbedding):
                    self.cache.put(key, embedding)
            results = [r if r is not None else fresh[k] for k, r in zip(keys, results, strict=True)]
        return [result for result in results if result is not None]

    def _forward_with_adapters(
        self, keys: list[tuple[str, str, Loras]]
    ) -> dict[tuple[str, str, Loras], TextEmbedding | InvalidArgument]:
        refused = self._load_adapters({name for _, _, row in keys for name, _ in row})
        answers: dict[tuple[str, str, Loras], TextEmbedding | InvalidArgument] = {}
        for key in keys:
            bad = [name for name, _ in key[2] if name in refused]
            if bad:
                answers[key] = InvalidArgument("loras", refused[bad[0]])
        runnable = [key for key in keys if key not in answers]
        if not runnable:
            return answers
        rows = [row for _, _, row in runnable]
        with contextlib.ExitStack() as applied:
            if any(rows) and self._adapters is not None:
                for adapters in self._adapters:
                    applied.enter_context(adapters.applied(rows))
            embeddings = self._forward([text for _, text, _ in runnable])
        return answers | dict(zip(runnable, embeddings, strict=True))

    def _load_adapters(self, names: set[str]) -> dict[str, str]:
        """Every named adapter resident in every encoder; why, for each one that is not."""
        refused: dict[str, str] = {}
        for name in sorted(names):
            if self._adapters is None:
                refused[name] = "this text encoder serves no adapters (SD_LORA_DIR is unset)"
                continue
            try:
                for adapters in self._adapters:
                    adapters.ensure([name], in_use=names)
            except LoraError as error:
                refused[name] = str(error)
        return refused

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
