"""`make fuzz` at a reduced size: schemathesis over `/openapi.json` against the real HTTP app on
the default model with tiny limits (the examples and coverage phases, a few hundred cases): no
5xx, and every response as the document says."""

from __future__ import annotations

from loadtest.fuzz import markdown, run
from tests.helpers.local_service import LocalService


def test_every_operation_survives_fuzzing_as_documented(tiny: LocalService) -> None:
    summary = run(tiny.url, examples=5, phases="examples,coverage", seed=1)
    print(markdown(summary))  # the counts actually run
    assert summary["operations"] >= 17 and summary["cases"] >= 500, summary
    assert summary["failures"] == [] and summary["errors"] == [], summary["output"]
    assert summary["exit_code"] == 0
