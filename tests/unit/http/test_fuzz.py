"""`make fuzz` at a reduced size: schemathesis over `/openapi.json` against the real HTTP app on
the default model with tiny limits (the examples and coverage phases, a few hundred cases): no
5xx, and every response as the document says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.fuzz import TINY_DEFAULTS, TINY_LIMITS, markdown, run
from tests.helpers.local_service import LocalService, local_service


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with local_service(
        None,
        kserve_model_dir=tmp_path_factory.mktemp("no-mnt-models"),
        result_cache_size=0,
        limits=TINY_LIMITS,
        defaults=TINY_DEFAULTS,
    ) as service:
        yield service


def test_every_operation_survives_fuzzing_as_documented(tiny: LocalService) -> None:
    summary = run(tiny.url, examples=5, phases="examples,coverage", seed=1)
    print(markdown(summary))  # the counts actually run
    assert summary["operations"] >= 17 and summary["cases"] >= 500, summary
    assert summary["failures"] == [] and summary["errors"] == [], summary["output"]
    assert summary["exit_code"] == 0
