"""The ResultStore deployment: one shared image store and result cache for all ingress replicas."""

from __future__ import annotations

from ray import serve

from serving.lru import LruCache
from serving.metrics import cache_lookups
from serving.results import CachedResult, ImageStore, StoredImage
from serving.settings import Settings


@serve.deployment(name="ResultStore")
class ResultStore:
    def __init__(self, settings: Settings) -> None:
        self._images = ImageStore(settings.image_store_bytes)
        self._results: LruCache[str, CachedResult] = LruCache(settings.result_cache_size)
        self._lookups = cache_lookups()

    def put_images(self, images: list[tuple[bytes, str]]) -> list[str]:
        return [self._images.put(data, fmt) for data, fmt in images]

    def get_image(self, digest: str) -> StoredImage | None:
        return self._images.get(digest)

    def lookup(self, key: str) -> tuple[CachedResult, list[StoredImage]] | None:
        """A cached result with all its images still stored, or None."""
        cached = self._results.get(key)
        images = [self._images.get(d) for d in cached.digests] if cached else []
        hit = cached is not None and all(image is not None for image in images)
        self._lookups.inc(tags={"cache": "result", "result": "hit" if hit else "miss"})
        if not hit or cached is None:
            return None
        return cached, [image for image in images if image is not None]

    def remember(self, key: str, result: CachedResult) -> None:
        self._results.put(key, result)

    def ready(self) -> bool:
        return True
