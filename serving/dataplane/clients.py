"""Who is asking, for fair sharing: each request's client, its weight and its priority class.

The UNet admits waiting requests by priority class first (`interactive` before `batch`), then by
weighted fair share between clients (serving/engine/fair_queue.py), so one client flooding the
queue cannot starve another. A client is its API key (named in the key file) or, without keys,
its address. The key file (SD_API_KEYS_FILE) holds one key per line, optionally followed by
`name=`, `weight=` (its share against weight-1 clients) and `priority=` (the highest class its
requests may ask for):

    k-3f9a...  name=mobile-app  weight=4  priority=interactive
    k-81c2...  name=nightly-batch  priority=batch
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

ANONYMOUS = "anonymous"  # the metrics label of clients without a key (addresses are unbounded)


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 is served first."""
        return PRIORITIES.index(self)


PRIORITIES = (Priority.INTERACTIVE, Priority.BATCH)


@dataclass(frozen=True)
class ClientShare:
    client: str  # who shares: `key:<name or hash>` or `addr:<address>`
    name: str  # the metrics label: the key's name, or `anonymous`
    weight: float
    priority: Priority

    def to_json(self) -> dict[str, object]:
        return {
            "client": self.client,
            "name": self.name,
            "weight": self.weight,
            "priority": self.priority.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ClientShare:
        return cls(
            str(data["client"]),
            str(data["name"]),
            float(data["weight"]),  # type: ignore[arg-type]
            Priority(str(data["priority"])),
        )


@dataclass(frozen=True)
class KeyEntry:
    key: bytes
    name: str
    weight: float
    allowance: Priority  # the highest priority its requests may have


def _entry(path: Path, number: int, key: str, options: dict[str, str]) -> KeyEntry:
    try:
        weight = float(options.get("weight", "1"))
    except ValueError:
        weight = 0.0
    if not 0 < weight <= 1000:
        raise ValueError(f"{path}:{number}: weight must be a number above 0, at most 1000")
    priority = options.get("priority", Priority.INTERACTIVE.value)
    if priority not in Priority.__members__.values():
        raise ValueError(f"{path}:{number}: priority must be one of {', '.join(PRIORITIES)}")
    name = options.get("name") or "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return KeyEntry(key.encode(), name, weight, Priority(priority))


def _read_key_file(path: Path) -> tuple[KeyEntry, ...]:
    """Every key with its name, weight and allowance; ValueError naming the line's problem."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        options: dict[str, str] = {}
        for word in words[1:]:
            name, equals, value = word.partition("=")
            if not equals or name not in ("name", "weight", "priority"):
                raise ValueError(
                    f"{path}:{number}: {word!r} is not name=, weight= or priority= after the key"
                )
            options[name] = value
        entries.append(_entry(path, number, words[0], options))
    if not entries:
        raise ValueError(f"{path} holds no API key")
    return tuple(entries)


class KeyBook:
    """The key file, read once: the one place a presented key is looked up, by the access policy
    (is it a key?) and the client directory (whose, with what share?)."""

    def __init__(self, entries: tuple[KeyEntry, ...]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: Path) -> KeyBook:
        return cls(_read_key_file(path))

    def find(self, authorization: str | None) -> KeyEntry | None:
        """The entry of the header's bearer key, compared in constant time against every key,
        so timing reveals neither a key nor which one matched."""
        token = bearer_token(authorization)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(token, entry.key) and token:
                found = entry
        return found


class ClientDirectory:
    """Each call's ClientShare, from its key's entry or its address."""

    def __init__(self, keys: KeyBook | None = None) -> None:
        self._keys = keys or KeyBook(())

    def share(
        self,
        authorization: str | None,
        address: str | None,
        requested: Priority | None,
        default: Priority,
    ) -> tuple[ClientShare, str | None]:
        """The share, and a warning when the request asked for more than its key allows (it
        runs at what the key allows)."""
        entry = self._keys.find(authorization)
        if entry is None:
            client, name, weight = f"addr:{address or 'unknown'}", ANONYMOUS, 1.0
            allowance = Priority.INTERACTIVE
        else:
            client, name, weight = f"key:{entry.name}", entry.name, entry.weight
            allowance = entry.allowance
        priority = requested or default
        warning = None
        if priority.rank < allowance.rank:
            if requested is not None:
                warning = (
                    f"priority {priority.value!r} is above what this API key may ask for; "
                    f"it ran as {allowance.value!r}"
                )
            priority = allowance
        return ClientShare(client, name, weight, priority), warning


def bearer_token(header: str | None) -> bytes:
    """The token of `Authorization: Bearer <token>`; empty for any other header."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""
