"""The UNet's waiting room: interactive before batch, fair shares between clients by weight and
cost, and a full room that a flood cannot keep to itself."""

from __future__ import annotations

from collections import Counter

from serving.engine.fair_queue import FairQueue


def served(queue: FairQueue[str], count: int) -> list[str]:
    order = []
    for _ in range(count):
        item = queue.pop()
        assert item is not None
        order.append(item)
    return order


def test_a_client_arriving_behind_a_flood_waits_for_one_request_not_the_flood() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(20):
        queue.push(f"heavy-{n}", "heavy", rank=0, weight=1, cost=10)
    queue.push("light-0", "light", rank=0, weight=1, cost=10)
    assert served(queue, 2) == ["heavy-0", "light-0"]


def test_two_busy_clients_share_by_weight_and_cost() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(60):
        queue.push(f"a-{n}", "a", rank=0, weight=2, cost=10)  # twice b's share
        queue.push(f"b-{n}", "b", rank=0, weight=1, cost=10)
        queue.push(f"c-{n}", "c", rank=0, weight=1, cost=20)  # requests twice as costly
    counts = Counter(item.split("-")[0] for item in served(queue, 70))
    # Work served: a 2 parts, b 1, c 1 (in half as many requests).
    assert abs(counts["a"] - 40) <= 2 and abs(counts["b"] - 20) <= 2 and abs(counts["c"] - 10) <= 2


def test_interactive_requests_go_before_batch_ones() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("batch-0", "a", rank=1, weight=1, cost=1)
    queue.push("interactive-0", "b", rank=0, weight=1, cost=1)
    queue.push("batch-1", "b", rank=1, weight=1, cost=1)
    assert served(queue, 3) == ["interactive-0", "batch-0", "batch-1"]
    assert queue.pop() is None


def test_an_idle_client_gets_no_credit_for_the_time_it_was_away() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("early", "sleeper", rank=0, weight=1, cost=1)
    assert served(queue, 1) == ["early"]
    for n in range(10):
        queue.push(f"busy-{n}", "busy", rank=0, weight=1, cost=1)
    served(queue, 5)
    for n in range(5):
        queue.push(f"sleeper-{n}", "sleeper", rank=0, weight=1, cost=1)
    # From now on the two alternate: the sleeper does not get five in a row.
    assert served(queue, 4) == ["sleeper-0", "busy-5", "sleeper-1", "busy-6"]


def test_a_full_room_pushes_out_the_floods_newest_not_the_newcomer() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(4):
        queue.push(f"heavy-{n}", "heavy", rank=0, weight=1, cost=1)
    assert queue.push_out("light", rank=0, weight=1) == "heavy-3"
    queue.push("light-0", "light", rank=0, weight=1, cost=1)
    # Once both hold as much per weight, the newcomer is the one refused.
    queue.push("light-1", "light", rank=0, weight=1, cost=1)
    queue.push("light-2", "light", rank=0, weight=1, cost=1)
    assert queue.push_out("light", rank=0, weight=1) is None
    assert queue.push_out("heavy", rank=0, weight=1) is None
    # An interactive request pushes out a batch one first.
    queue.push("batch-0", "heavy", rank=1, weight=1, cost=1)
    assert queue.push_out("heavy", rank=0, weight=1) == "batch-0"
    assert len(queue) == 6 and queue.clients() == 2


def test_cancelled_requests_leave_the_room() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(3):
        queue.push(f"a-{n}", "a", rank=0, weight=1, cost=1)
    assert queue.remove(lambda item: item == "a-1") == ["a-1"]
    assert served(queue, 2) == ["a-0", "a-2"] and len(queue) == 0
    queue.push("b-0", "b", rank=1, weight=1, cost=1)
    assert queue.drain() == ["b-0"] and queue.pop() is None


def test_work_ahead_counts_what_would_go_first() -> None:
    queue: FairQueue[str] = FairQueue()
    for n in range(5):
        queue.push(f"heavy-{n}", "heavy", rank=0, weight=1, cost=10)
    queue.push("job-0", "jobs", rank=1, weight=1, cost=100)
    # A newcomer goes after the flood's first request only; batch work is behind it.
    assert queue.work_ahead("light", rank=0) == 10
    # The flood's own next request goes after all five of its waiting ones.
    assert queue.work_ahead("heavy", rank=0) == 50
    # A batch request waits for every interactive one, and the batch request before it.
    assert queue.work_ahead("jobs", rank=1) == 150
