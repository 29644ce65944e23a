"""Finished images, content-addressed for CDNs, and what the result cache remembers of a request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from serving.dataplane.codecs import MEDIA_TYPES
from serving.dataplane.request import GenerationRequest


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    output_format: str
    # What made it: the request's parameters with this image's seed (feedback rows carry them).
    provenance: dict[str, Any] | None = None

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.output_format]


@dataclass(frozen=True)
class CachedResult:
    """A determined request's images, by digest, in order, with their seeds."""

    digests: list[str]
    seeds: list[int]


def provenance(request: GenerationRequest, seed: int) -> dict[str, Any]:
    """The parameters that made one of a request's images: the request's, with its own seed."""
    made = request.model_dump(mode="json", exclude={"num_images", "output_format"})
    return {**made, "seed": seed}


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:40]


def request_key(model: str, request: GenerationRequest) -> str:
    """Identifies a fully determined request: same model, parameters and seed, same images."""
    return hashlib.sha256(f"{model}\n{request.model_dump_json()}".encode()).hexdigest()
