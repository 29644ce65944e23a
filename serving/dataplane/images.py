"""Where finished images live, by digest: in this process's memory (the local default), or at an
fsspec URL (`file://`, `s3://`, `gs://`) that every replica shares and a restart keeps.

Beside each image, `<digest>.json` records its format, when it was stored and what made it (the
request's parameters: feedback on the image carries them), so the image is served with the right
media type and `purge` can delete what is older than the retention period.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

import fsspec
from fsspec.core import url_to_fs

from serving.dataplane.results import StoredImage
from serving.lru import LruCache
from serving.settings import Settings


class ImageStore(Protocol):
    async def put(self, digest: str, image: StoredImage) -> None: ...

    async def get(self, digest: str) -> StoredImage | None: ...


class MemoryImages:
    """Bounded by bytes: the least recently used go first."""

    def __init__(self, max_bytes: int) -> None:
        self._images: LruCache[str, StoredImage] = LruCache(
            None, weigh=lambda image: len(image.data), max_weight=max_bytes
        )

    async def put(self, digest: str, image: StoredImage) -> None:
        self._images.put(digest, image)

    async def get(self, digest: str) -> StoredImage | None:
        return self._images.get(digest)


class FsspecImages:
    """`<root>/<digest>` and `<root>/<digest>.json`; blocking file-system calls run in a thread.
    Credentials come the way fsspec's back ends read them (AWS_* variables, a profile, workload
    identity)."""

    def __init__(self, url: str, clock: Any = time.time) -> None:
        self.url = url
        fs, root = url_to_fs(url)
        self._fs: fsspec.AbstractFileSystem = fs
        self._root = root.rstrip("/")
        self._clock = clock
        self._fs.makedirs(self._root, exist_ok=True)

    async def put(self, digest: str, image: StoredImage) -> None:
        await asyncio.to_thread(self._write, digest, image)

    async def get(self, digest: str) -> StoredImage | None:
        return await asyncio.to_thread(self._read, digest)

    def purge(self, older_than_s: float) -> int:
        """Delete images stored more than `older_than_s` ago; returns how many."""
        deadline = self._clock() - older_than_s
        deleted = 0
        for path in self._fs.glob(f"{self._root}/*.json"):
            try:
                stored_at = json.loads(self._fs.cat_file(path))["stored_at"]
            except (FileNotFoundError, KeyError, ValueError):
                continue
            if stored_at < deadline:
                self._fs.rm([path.removesuffix(".json"), path])
                deleted += 1
        return deleted

    def _write(self, digest: str, image: StoredImage) -> None:
        path = f"{self._root}/{digest}"
        # The image first: a reader that finds the description finds the image.
        self._fs.pipe_file(path, image.data)
        description = {
            "format": image.output_format,
            "stored_at": self._clock(),
            "provenance": image.provenance,
        }
        self._fs.pipe_file(f"{path}.json", json.dumps(description).encode())

    def _read(self, digest: str) -> StoredImage | None:
        if not digest.isalnum():  # a digest is hex: never a path
            return None
        path = f"{self._root}/{digest}"
        try:
            description = json.loads(self._fs.cat_file(f"{path}.json"))
            data = self._fs.cat_file(path)
            return StoredImage(data, description["format"], description.get("provenance"))
        except FileNotFoundError:
            return None


def image_store(settings: Settings, shared: bool) -> ImageStore:
    """The configured image store; `shared` (Redis holds the rest) defaults to files under the
    cache directory rather than memory, so images outlive the process like the index does."""
    url = settings.image_store_url
    if url is None and shared:
        url = (settings.cache_dir / "images").resolve().as_uri()
    return MemoryImages(settings.image_store_bytes) if url is None else FsspecImages(url)
