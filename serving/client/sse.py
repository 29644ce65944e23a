"""Server-sent events (text/event-stream) read line by line: the one parser, for the clients and
the tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # the `event:` field ("message" when absent)
    data: dict[str, Any]  # the `data:` field, parsed as JSON
    id: str | None  # the `id:` field, what Last-Event-ID resumes from


class EventParser:
    """Feed it lines; it returns an Event once one is complete (at its blank line)."""

    def __init__(self) -> None:
        self._kind, self._data, self._id = "message", "", ""

    def _reset(self) -> None:
        self._kind, self._data, self._id = "message", "", ""

    def feed(self, line: str) -> Event | None:
        if line.startswith("event: "):
            self._kind = line[7:]
        elif line.startswith("data: "):
            self._data += line[6:]
        elif line.startswith("id: "):
            self._id = line[4:]
        elif not line and self._data:
            event = Event(self._kind, json.loads(self._data), self._id or None)
            self._reset()
            return event
        return None


def events(lines: Iterable[str]) -> Iterator[Event]:
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def async_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    parser = EventParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
