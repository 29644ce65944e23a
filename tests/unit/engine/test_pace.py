"""The pace the denoiser promises deadlines by: the slower of its last iterations' totals and
an average weighted to the last few."""

from __future__ import annotations

import pytest

from serving.engine.denoiser import Pace, PaceMeter

QUICK_S, TURNOVER_S, WORK = 0.25, 0.75, 8.0  # a batch of eight, one step each


def cohorts(count: int, steps: int = 10) -> list[tuple[float, float]]:
    """Iterations of a saturated engine whose batch turns over together every `steps`: the
    iteration that ends one cohort and prepares the next is the slow one."""
    one = [(WORK, QUICK_S)] * (steps - 1) + [(WORK, TURNOVER_S)]
    return one * count


def promised(iterations: list[tuple[float, float]]) -> Pace:
    """What the engine's meter promises after these iterations."""
    meter = PaceMeter()
    for work, seconds in iterations:
        meter.add(work, seconds)
    assert meter.pace is not None
    return meter.pace


def recent_only(iterations: list[tuple[float, float]]) -> Pace:
    """An average weighted to the last few iterations, alone."""
    pace = None
    for work, seconds in iterations:
        pace = Pace(work / seconds, seconds).averaged_with(pace)
    assert pace is not None
    return pace


def test_the_turnover_iteration_counts_at_its_cost_whatever_the_phase() -> None:
    just_before_turnover = cohorts(5)[:-1]  # nine quick iterations since the last slow one
    # An average weighted to the last few iterations alone promises nearly the quick pace...
    assert recent_only(just_before_turnover).iteration_s < 0.27
    # ...where ten steps take a tenth of a turnover more each.
    mean_s = (9 * QUICK_S + TURNOVER_S) / 10
    assert promised(just_before_turnover).iteration_s == pytest.approx(mean_s, rel=0.05)
    assert promised(cohorts(5)).iteration_s >= mean_s


def test_a_pace_that_falls_is_promised_at_once() -> None:
    before, slowed = cohorts(4), [(WORK, 0.41)] * 5  # arrivals crowd the CPU
    assert Pace.over(before + slowed).iteration_s < 0.33  # long totals lag...
    pace = promised(before + slowed)
    assert pace.iteration_s > 0.37  # ...the promise does not
    assert pace.work_per_s == pytest.approx(WORK / pace.iteration_s, rel=0.1)


def test_the_slower_takes_each_figure_from_the_slower_side() -> None:
    fast, slow = Pace(32.0, 0.25), Pace(20.0, 0.4)
    assert fast.slower(slow) == slow.slower(fast) == Pace(20.0, 0.4)
