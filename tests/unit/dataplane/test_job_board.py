"""The job board: event order, cancellation, bounded memory and expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.dataplane.jobs import JobBoard, JobEvent, JobEventKind, JobResult, JobStatus, JobView
from serving.errors import ErrorDetail, QueueFull

PROGRESS = JobEventKind.PROGRESS
NO_IMAGES = JobResult(images=[], cached=False, timings_ms={}, warnings=[])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def collect(board: JobBoard, job_id: str, after: int = -1) -> list[JobEvent | None]:
    return [event async for event in board.events(job_id, after)]


def test_events_are_ordered_and_end_with_the_result() -> None:
    async def scenario() -> list[JobEvent | None]:
        board = JobBoard(10, 60)
        board.create("a", {"prompt": "x"}, steps_total=2, webhook_url=None)
        listener = asyncio.create_task(collect(board, "a"))
        await asyncio.sleep(0)
        for step in (1, 2):
            assert not await board.report("a", PROGRESS, {"step": step, "preview": "p"})
        await board.finish("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        return await listener

    events = run(scenario())
    assert [e.index for e in events if e] == [0, 1, 2, 3, 4]
    assert [e.kind for e in events if e] == ["status", "status", "progress", "progress", "result"]
    progress = [e for e in events if e and e.kind == "progress"]
    assert [e.data["steps_done"] for e in progress] == [1, 2]
    assert events[-1] is not None and events[-1].data["status"] == "succeeded"


def test_only_the_latest_preview_is_kept_for_late_listeners() -> None:
    async def scenario() -> list[JobEvent | None]:
        board = JobBoard(10, 60)
        board.create("a", {}, steps_total=3, webhook_url=None)
        for step in (1, 2, 3):
            await board.report("a", PROGRESS, {"step": step, "preview": f"p{step}"})
        await board.finish("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        return await collect(board, "a", after=1)

    progress = [e for e in run(scenario()) if e and e.kind == "progress"]
    assert ["preview" in e.data for e in progress] == [False, False, True]


def test_cancel_is_seen_by_the_next_report_and_reports_after_the_end_are_ignored() -> None:
    async def scenario() -> JobView:
        board = JobBoard(10, 60)
        board.create("a", {}, steps_total=10, webhook_url=None)
        assert not await board.report("a", PROGRESS, {"step": 1})
        board.request_cancel("a")
        assert await board.report("a", PROGRESS, {"step": 2})
        await board.finish("a", JobStatus.CANCELLED)
        assert await board.report("a", PROGRESS, {"step": 3})  # late: ignored
        view = board.get("a")
        assert view is not None
        return view

    view = run(scenario())
    assert view.status is JobStatus.CANCELLED and view.progress.steps_done == 2


def test_the_board_is_bounded_and_forgets_finished_jobs() -> None:
    clock = Clock()

    async def scenario() -> None:
        board = JobBoard(2, ttl_s=60, clock=clock)
        board.create("a", {}, 1, None)
        board.create("b", {}, 1, None)
        with pytest.raises(QueueFull):
            board.create("c", {}, 1, None)  # both still running: never evicted
        await board.finish("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        board.create("c", {}, 1, None)  # the finished one makes room
        assert board.get("a") is None and board.get("b") is not None
        await board.finish("c", JobStatus.FAILED, error=ErrorDetail(code="internal", message="x"))
        clock.now += 61
        board.create("d", {}, 1, None)
        assert board.get("c") is None  # expired

    run(scenario())


def test_a_silent_job_yields_heartbeats() -> None:
    async def scenario() -> list[JobEvent | None]:
        board = JobBoard(10, 60)
        board.create("a", {}, 1, None)
        seen: list[JobEvent | None] = []
        async for event in board.events("a", heartbeat_s=0.01):
            seen.append(event)
            if len(seen) == 3:
                break
        return seen

    assert run(scenario())[1:] == [None, None]
