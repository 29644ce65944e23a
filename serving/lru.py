"""One bounded least-recently-used map, with hit/miss counts: the embedding cache, the result
cache, the image store (bounded in bytes) and the rate-limit buckets all use it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    capacity: int | None


class LruCache(Generic[K, V]):
    """Evicts the least recently used entries past `capacity` entries (0 disables the cache,
    None leaves the count unbounded) and, with `weigh`, past `max_weight` in all; the newest
    entry always stays."""

    def __init__(
        self,
        capacity: int | None,
        *,
        weigh: Callable[[V], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        self._capacity = capacity
        self._weigh = weigh
        self._max_weight = max_weight
        self._weight = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self._capacity == 0:
            return
        previous = self._entries.pop(key, None)
        if previous is not None and self._weigh is not None:
            self._weight -= self._weigh(previous)
        self._entries[key] = value
        if self._weigh is not None:
            self._weight += self._weigh(value)
        while len(self._entries) > 1 and self._over():
            _, evicted = self._entries.popitem(last=False)
            if self._weigh is not None:
                self._weight -= self._weigh(evicted)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _over(self) -> bool:
        over_count = self._capacity is not None and len(self._entries) > self._capacity
        return over_count or (self._weigh is not None and self._weight > self._max_weight)

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._entries), self._capacity)
