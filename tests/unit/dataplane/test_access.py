"""The one access policy: API keys, per-client token buckets, and the operations open to all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.dataplane.access import (
    OPEN_OPERATIONS,
    AccessPolicy,
    Operation,
    RateLimit,
)
from serving.dataplane.clients import KeyBook, KeyEntry, Priority
from serving.dataplane.store import InMemoryStore, TokenBuckets
from serving.errors import RateLimited, Unauthenticated
from serving.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_the_sustained_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    assert buckets.take("a", 60, 2) == 0 and buckets.take("a", 60, 2) == 0
    assert buckets.take("a", 60, 2) == 1.0  # empty: one token per second
    assert buckets.take("b", 60, 2) == 0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a", 60, 2) == 0.5
    clock.now += 1.0
    assert buckets.take("a", 60, 2) == 0


def test_an_idle_client_refills_only_up_to_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    clock.now += 3600
    assert [buckets.take("a", 60, 2) == 0 for _ in range(3)] == [True, True, False]


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("\n \n")
    with pytest.raises(ValueError, match="no API key"):
        KeyBook.load(tmp_path / "keys")


def test_keys_are_read_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("first-key\n\n  second-key  \n")
    keys = KeyBook.load(tmp_path / "keys")
    assert [entry.key for entry in keys.entries] == [b"first-key", b"second-key"]
    assert keys.find("Bearer second-key") == keys.entries[1]
    assert keys.find("bearer first-key") == keys.entries[0]
    for header in (None, "Bearer wrong", "Bearer ", "Basic first-key", "first-key"):
        assert keys.find(header) is None


def test_an_empty_token_never_matches() -> None:
    empty = KeyEntry(b"", "empty", 1.0, Priority.INTERACTIVE)
    assert KeyBook((empty,)).find("Bearer ") is None


def test_open_operations_need_no_key_and_are_never_limited() -> None:
    store = InMemoryStore(Settings())
    keys = KeyBook((KeyEntry(b"key", "k", 1.0, Priority.INTERACTIVE),))
    policy = AccessPolicy(keys, RateLimit(per_minute=1, burst=1), store)

    async def scenario() -> None:
        for operation in OPEN_OPERATIONS:
            for _ in range(5):
                await policy.admit(operation, None, "10.0.0.1")
        with pytest.raises(Unauthenticated) as caught:
            await policy.admit(Operation.OTHER, "Bearer wrong", "10.0.0.1")
        assert "wrong" not in caught.value.message
        await policy.admit(Operation.OTHER, "Bearer key", "10.0.0.1")
        with pytest.raises(RateLimited) as limited:
            await policy.admit(Operation.OTHER, "Bearer key", "10.0.0.2")  # same key, other host
        assert limited.value.retry_after_s == 60

    asyncio.run(scenario())
    assert {Operation.SERVER_LIVE, Operation.SERVER_READY, Operation.MODEL_READY} <= OPEN_OPERATIONS
