"""`sd-serving promote` against a real MLflow registry: a challenger that lost a source is
refused naming it, and the champion stays; the live comparison refuses a challenger that fails,
is slow or has too little traffic to judge; bad input names what is wrong. (A real Prometheus
reading a real service's canary: tests/integration/test_prometheus.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from serving.cli.main import main
from serving.training.promotion import GateLimits, Live, Verdict, compare_live
from serving.training.registry import CHALLENGER, CHAMPION
from tests.helpers.registry import figures, registry_with

BASE = figures(world=0.99)
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing answers


def test_a_challenger_that_lost_a_source_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = registry_with(tmp_path, "demo", BASE, figures(world=0.95, crosses=0.9))
    uri = registry.uri
    status = main(["promote", "demo", "--registry-uri", uri, "--prometheus-url", UNREACHABLE])
    assert status == 1
    err = capsys.readouterr().err
    assert "refused: source world regressed: adherence 95.0 % against the champion's 99.0 %" in err
    assert "champion stays version 1" in err
    assert registry.get("demo", CHAMPION).version == "1"
    assert registry.get("demo", CHALLENGER).version == "2"


def test_live_signals_refuse_a_failing_slow_or_unseen_challenger() -> None:
    limits = GateLimits(min_requests=20)
    champion = Live(requests=1000, failures=5, p95_s=2.0)

    def judged(challenger: Live) -> Verdict:
        verdict = Verdict()
        compare_live(champion, challenger, limits, verdict)
        return verdict

    assert judged(Live(100, 1, 2.2)).promote
    failing = judged(Live(100, 10, 2.0))
    assert not failing.promote and failing.reasons[0].startswith("error ratio regressed: 10.0 %")
    slow = judged(Live(100, 0, 3.0))
    assert not slow.promote and "p95 latency regressed: 3.00 s" in slow.reasons[0]
    unseen = judged(Live(5, 0, 2.0))
    assert not unseen.promote and "served 5 generations" in unseen.reasons[0]
    unfinished = judged(Live(30, 30, math.nan))
    assert any("finished no generation" in reason for reason in unfinished.reasons)


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["promote", "nobody"], "model 'nobody' has no version 'champion'"),
        (["promote", "demo", "--challenger", "9"], "model 'demo' has no version '9'"),
        (["promote", "demo", "--challenger", "1"], "version 1 of demo is already the champion"),
        (["promote", "demo", "--max-latency-ratio", "0.5"], "--max-latency-ratio must be ≥ 1"),
        (["promote", "bad name"], "model name 'bad name'"),
    ],
)
def test_bad_input_is_refused_and_the_registry_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], words: str
) -> None:
    registry = registry_with(tmp_path, "demo", BASE, figures(world=0.99))
    given = [*arguments, "--registry-uri", registry.uri, "--prometheus-url", UNREACHABLE]
    assert main(given) == 2
    assert words in capsys.readouterr().err
    assert registry.get("demo", CHAMPION).version == "1"
    assert registry.get("demo", CHALLENGER).version == "2"
