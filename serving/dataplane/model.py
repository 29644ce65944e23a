"""What the ingress knows of the served model, read from its configs and tokenizer (no weights)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.dataplane.prompts import PromptGuard
from serving.models import loader
from serving.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    name: str  # what the API reports
    id: str  # name and source: keys the result cache, so another checkpoint never hits
    native_size: int  # the default width and height
    guard: PromptGuard

    @classmethod
    def load(cls, settings: Settings) -> ServedModel:
        source = loader.resolve_model_source(settings)
        return cls(
            name=settings.model_name,
            id=f"{settings.model_name}@{source}",
            native_size=loader.read_model_info(source).native_size,
            guard=PromptGuard(loader.load_tokenizer(source)),
        )
