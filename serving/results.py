"""Finished images, content-addressed for CDNs, and what the result cache remembers of a request.

Plain Python: the ResultStore deployment wraps it so every ingress replica sees the same images.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from serving.codecs import MEDIA_TYPES
from serving.request import GenerationRequest


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    output_format: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.output_format]


@dataclass(frozen=True)
class CachedResult:
    digests: list[str]
    seeds: list[int]


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:40]


def request_key(model: str, request: GenerationRequest) -> str:
    """Identifies a fully determined request: same model, parameters and seed, same images."""
    return hashlib.sha256(f"{model}\n{request.model_dump_json()}".encode()).hexdigest()


class ImageStore:
    """Least-recently-used images by digest, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._images: OrderedDict[str, StoredImage] = OrderedDict()

    def put(self, data: bytes, output_format: str) -> str:
        digest = image_digest(data)
        if digest not in self._images:
            self._images[digest] = StoredImage(data, output_format)
            self._bytes += len(data)
        self._images.move_to_end(digest)
        while self._bytes > self._max_bytes and len(self._images) > 1:
            _, evicted = self._images.popitem(last=False)
            self._bytes -= len(evicted.data)
        return digest

    def get(self, digest: str) -> StoredImage | None:
        image = self._images.get(digest)
        if image is not None:
            self._images.move_to_end(digest)
        return image
