"""The UNet's waiting room: which waiting request gets the next free batch slot.

Strict priority between classes (rank 0, `interactive`, before rank 1, `batch`), then weighted
fair sharing between clients within a class by start-time fair queueing (Goyal, Vin and Cheng,
1996): a request's start tag is the later of the class's virtual time and its client's previous
finish tag, its finish tag adds its cost over the client's weight, and the head with the smallest
start tag goes first. A client that sends ten times the requests gets its weight's share of the
slots, not ten times another's, and a client that just arrived waits behind at most one request
of each other client. Cost is UNet work: steps times rows (guidance doubles them) times latent
pixels.

When the room is full, a request may push out the newest waiting request of a heavier client (a
lower class first, then the client with the most waiting per weight), so a flood fills its own
share of the room, not everyone's. Plain Python, one lock held by the engine.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Waiting(Generic[T]):
    item: T
    client: str
    start: float
    finish: float
    order: int
    cost: float


@dataclass
class _Class(Generic[T]):
    """One priority class's clients and virtual time."""

    virtual_time: float = 0.0
    queues: dict[str, deque[_Waiting[T]]] = field(default_factory=dict)
    last_finish: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def heaviest(self, other_than: str | None = None) -> tuple[str, float] | None:
        """The client with the most waiting per weight, and that load."""
        loads = [
            (client, len(queue) / self.weights[client])
            for client, queue in self.queues.items()
            if client != other_than and queue
        ]
        return max(loads, key=lambda load: load[1], default=None)

    def take_newest(self, client: str) -> _Waiting[T]:
        waiting = self.queues[client].pop()
        self.last_finish[client] = waiting.start  # as if it had never come
        self._forget_if_idle(client)
        return waiting

    def _forget_if_idle(self, client: str) -> None:
        if not self.queues[client]:
            del self.queues[client]
            if self.last_finish.get(client, 0.0) <= self.virtual_time:
                self.last_finish.pop(client, None)
                self.weights.pop(client, None)


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._classes: dict[int, _Class[T]] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._classes.values())

    def push(self, item: T, client: str, rank: int, weight: float, cost: float) -> None:
        waiting_class = self._classes.setdefault(rank, _Class())
        start = max(waiting_class.virtual_time, waiting_class.last_finish.get(client, 0.0))
        finish = start + cost / weight
        waiting_class.last_finish[client] = finish
        waiting_class.weights[client] = weight
        entry = _Waiting(item, client, start, finish, next(self._order), cost)
        waiting_class.queues.setdefault(client, deque()).append(entry)

    def pop(self) -> T | None:
        """The next request to admit, or None when nobody waits."""
        for rank in sorted(self._classes):
            waiting_class = self._classes[rank]
            heads = [queue[0] for queue in waiting_class.queues.values()]
            if not heads:
                continue
            first = min(heads, key=lambda head: (head.start, head.order))
            waiting_class.queues[first.client].popleft()
            waiting_class.virtual_time = first.start
            waiting_class._forget_if_idle(first.client)
            return first.item
        return None

    def work_ahead(self, client: str, rank: int) -> float:
        """The cost of the waiting requests that would go before a request of `client` pushed
        now at `rank`: all of a higher class, and those of its own class whose start tags are
        not later than the one it would get (later arrivals of a higher class are unknowable)."""
        ahead = 0.0
        for other_rank, waiting_class in self._classes.items():
            if other_rank > rank:
                continue
            start = max(waiting_class.virtual_time, waiting_class.last_finish.get(client, 0.0))
            for queue in waiting_class.queues.values():
                ahead += sum(
                    entry.cost for entry in queue if other_rank < rank or entry.start <= start
                )
        return ahead

    def push_out(self, client: str, rank: int, weight: float) -> T | None:
        """Room for a request of `client` at `rank` in a full room: the newest waiting request of
        a lower class, else of a client with more waiting per weight than `client` would have;
        None when the newcomer is the one to refuse."""
        for lower in sorted((r for r in self._classes if r > rank), reverse=True):
            heaviest = self._classes[lower].heaviest()
            if heaviest is not None:
                return self._classes[lower].take_newest(heaviest[0]).item
        same = self._classes.get(rank)
        if same is None:
            return None
        heaviest = same.heaviest(other_than=client)
        own = (len(same.queues.get(client, ())) + 1) / weight
        if heaviest is None or heaviest[1] <= own:
            return None
        return same.take_newest(heaviest[0]).item

    def remove(self, drop: Callable[[T], bool]) -> list[T]:
        """Take out the waiting requests `drop` says (cancelled ones); returns them."""
        dropped = []
        for waiting_class in self._classes.values():
            for client, queue in list(waiting_class.queues.items()):
                kept: deque[_Waiting[T]] = deque()
                gone: list[_Waiting[T]] = []
                for entry in queue:  # one pass: `drop` is asked once per request
                    (gone if drop(entry.item) else kept).append(entry)
                if not gone:  # every engine step asks: untouched queues stay as they are
                    continue
                dropped += [entry.item for entry in gone]
                waiting_class.queues[client] = kept
                waiting_class._forget_if_idle(client)
        return dropped

    def drain(self) -> list[T]:
        """Every waiting request, the room emptied."""
        items = self.remove(lambda _: True)
        self._classes.clear()
        return items

    def clients(self) -> int:
        """Distinct clients waiting."""
        return len({c for waiting in self._classes.values() for c in waiting.queues})

    def depth(self, rank: int) -> int:
        waiting_class = self._classes.get(rank)
        return 0 if waiting_class is None else len(waiting_class)
