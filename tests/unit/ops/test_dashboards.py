"""Grafana dashboards: generated from scripts/dashboards.py, valid against Grafana's schemas."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[3]
FOLDER = ROOT / "charts" / "sd-serving" / "dashboards"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "scripts" / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_dir() -> Path:
    folder = Path(os.environ.get("GRAFANA_SCHEMA_DIR") or ROOT.parent / "shared/schemas/grafana")
    if not (folder / "dashboard.jsonschema.json").exists():
        pytest.fail(f"no Grafana JSON schemas in {folder}: set GRAFANA_SCHEMA_DIR")
    return folder


def _validator(name: str, definition: str) -> jsonschema.Draft7Validator:
    schema = json.loads((_schema_dir() / f"{name}.jsonschema.json").read_text())
    return jsonschema.Draft7Validator({**schema, "$ref": f"#/definitions/{definition}"})


def dashboards() -> list[Path]:
    return sorted(FOLDER.glob("*.json"))


def test_files_are_what_the_generator_writes() -> None:
    generator = _generator()
    assert sorted(p.name for p in dashboards()) == sorted(generator.DASHBOARDS)
    for path in dashboards():
        assert path.read_text() == generator.render(path.name), (
            f"{path.name} differs from scripts/dashboards.py: run `make dashboards`"
        )


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_validates_against_grafana_schemas(path: Path) -> None:
    board = json.loads(path.read_text())
    errors = [e.message for e in _validator("dashboard", "Dashboard").iter_errors(board)]
    assert not errors, errors[:5]
    options = _validator("timeseries", "Options")
    field_config = _validator("timeseries", "FieldConfig")
    query = _validator("prometheus", "dataquery")
    for panel in board["panels"]:
        assert panel["type"] == "timeseries"
        assert not list(options.iter_errors(panel["options"])), panel["title"]
        assert not list(field_config.iter_errors(panel["fieldConfig"]["defaults"]["custom"]))
        for target in panel["targets"]:
            assert not [e.message for e in query.iter_errors(target)], panel["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)


def test_scaling_dashboard_covers_what_an_sre_needs() -> None:
    board = json.loads((FOLDER / "sd-serving-scaling.json").read_text())
    text = json.dumps(board)
    for series in (
        "ray_sd_requests_total",
        "ray_sd_stage_duration_seconds",
        "ray_serve_autoscaling_target_replicas",
        "ray_sd_unet_queue_depth",
        "ray_sd_unet_batch_size",
        "DCGM_FI_DEV_GPU_UTIL",
        "kube_node_labels",
        "kube_horizontalpodautoscaler_status_desired_replicas",
    ):
        assert series in text, series


def test_schema_check_catches_a_broken_dashboard() -> None:
    board = json.loads((FOLDER / "sd-serving-scaling.json").read_text())
    board["panels"][0]["gridPos"] = {"h": "tall"}
    assert list(_validator("dashboard", "Dashboard").iter_errors(board))


def test_readme_documents_every_exported_series() -> None:
    from serving.metrics import EXPORTED

    readme = (ROOT / "README.md").read_text()
    for name in EXPORTED:
        assert f"`{name}" in readme, f"{name} is not documented in README.md"
