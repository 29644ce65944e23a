"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli.kserve_argv import import_kserve

import_kserve()  # kserve would parse pytest's flags as its own


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model exported once per test session, as `sd-serving export-model` writes it."""
    from serving.models.embedded import export

    return export(tmp_path_factory.mktemp("models") / "embedded")


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every embedded family (sd-v, sd-turbo, lcm, sdxl, sdxl-turbo) exported once per session."""
    from serving.models.embedded import FAMILIES, export

    root = tmp_path_factory.mktemp("families")
    return {family: export(root / family, family) for family in FAMILIES if family != "sd"}
