"""Request batching sizes come from settings, applied to `@serve.batch` methods at replica start."""

from __future__ import annotations

from typing import Protocol, cast


class _TunableBatch(Protocol):
    def set_max_batch_size(self, size: int) -> None: ...
    def set_batch_wait_timeout_s(self, timeout_s: float) -> None: ...


def tune_batching(method: object, max_batch_size: int, wait_s: float) -> None:
    batched = cast(_TunableBatch, method)  # serve.batch's wrapper carries these setters
    batched.set_max_batch_size(max_batch_size)
    batched.set_batch_wait_timeout_s(wait_s)
