"""Chart tests render with the pinned helm; the CRD folder is configurable and must exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.render_k8s import ROOT


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    folder = Path(os.environ.get("CRD_DIR") or ROOT.parent / "shared" / "crds")
    if not (folder / "serving.kserve.io_inferenceservices.yaml").exists():
        pytest.fail(
            f"no CRD schemas in {folder}: set CRD_DIR, or run `make crds` where there is "
            "network (it downloads the pinned upstream releases listed in `make crds-info`)"
        )
    return folder
