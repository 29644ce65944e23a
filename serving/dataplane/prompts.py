"""The prompt token limit, checked before any stage does work."""

from __future__ import annotations

from transformers import CLIPTokenizer

from serving.dataplane.request import GenerationRequest
from serving.errors import InvalidArgument
from serving.settings import Limits


class PromptGuard:
    """Counts tokens the way the text encoder will, and rejects or flags prompts over the limit."""

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self._tokenizer = tokenizer
        self._limit = int(tokenizer.model_max_length)

    def check(self, request: GenerationRequest, limits: Limits) -> list[str]:
        """Warnings for the response; raises InvalidArgument when a prompt must be rejected
        (`limits.prompt_overflow` says whether prompts over the limit are truncated instead)."""
        warnings = []
        for field in ("prompt", "negative_prompt"):
            count = len(self._tokenizer(getattr(request, field)).input_ids)
            if count <= self._limit:
                continue
            if limits.prompt_overflow != "truncate":
                raise InvalidArgument(
                    field,
                    f"is {count} tokens; the limit is {self._limit} including the start and end "
                    "tokens (rejected, not truncated)",
                )
            warnings.append(
                f"{field} was truncated from {count} to {self._limit} tokens "
                "(the text encoder's limit, start and end tokens included)"
            )
        return warnings
