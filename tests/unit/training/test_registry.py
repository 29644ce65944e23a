"""Model versions in a real MLflow registry (a sqlite store in a temporary folder): recorded with
their data manifest, parent and figures, found by number and alias, their files downloaded; an
unknown version is named, and a registration that fails leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.training.registry import CHALLENGER, CHAMPION, Registry, RegistryError

FIGURES = {"world": {"colour": 1.0, "shape": 0.98, "background": 1.0, "mean": 0.99, "images": 48}}
DATA = [{"role": "original", "path": "data/original", "sha256": "ab" * 32}]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}")


def test_versions_round_trip_with_their_manifest_parent_figures_and_files(
    registry: Registry, tmp_path: Path
) -> None:
    base = registry.register(
        "demo", {"base": "models/demo", "sources": FIGURES, "data": DATA}, None, None
    )
    registry.alias("demo", CHAMPION, base.version)
    adapter = tmp_path / "stratified"
    adapter.mkdir()
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    tuned_figures = {
        "world": {**FIGURES["world"], "mean": 0.97},
        "new": {"mean": 0.8, "images": 12},
    }
    record = {
        "base": "models/demo",
        "strategy": "stratified",
        "config": {"seed": 3, "weights": {"world": 1.0, "new": 2.0}},
        "data": [*DATA, {"role": "new", "path": "data/new", "sha256": "cd" * 32}],
        "sources": tuned_figures,
        "parent_sources": FIGURES,
    }
    tuned = registry.register("demo", record, adapter, base.version)
    registry.alias("demo", CHALLENGER, tuned.version)

    assert registry.versions("demo") == ["1", "2"]
    champion, challenger = registry.get("demo", CHAMPION), registry.get("demo", CHALLENGER)
    assert (champion.version, champion.strategy, champion.parent) == ("1", "base", None)
    assert (challenger.version, challenger.strategy, challenger.parent) == ("2", "stratified", "1")
    assert challenger.sources == tuned_figures
    assert challenger.parent_sources == FIGURES
    assert registry.get("demo", "2") == challenger
    files = registry.download("demo", CHALLENGER, tmp_path / "download")
    assert (files / "pytorch_lora_weights.safetensors").read_bytes() == b"weights"
    assert "base.json" in {p.name for p in registry.download("demo", "1", tmp_path / "b").iterdir()}
    # The manifest travels as the version's tags and the run's parameters.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    tags = client.get_model_version("demo", "2").tags
    assert tags["data.1.sha256"] == "cd" * 32 and tags["parent"] == "1"
    assert client.get_run(challenger.run_id).data.params["seed"] == "3"


def test_an_unknown_version_or_alias_is_named(registry: Registry) -> None:
    registry.register("demo", {"base": "b", "sources": FIGURES, "data": DATA}, None, None)
    with pytest.raises(RegistryError, match=r"model 'demo' has no version '7' \(versions: 1\)"):
        registry.get("demo", "7")
    with pytest.raises(RegistryError, match="has no version 'challenger'"):
        registry.get("demo", CHALLENGER)
    with pytest.raises(RegistryError, match="has no version '9'"):
        registry.alias("demo", CHAMPION, "9")
    with pytest.raises(RegistryError, match='model name "it\'s": use 1 to 64 letters'):
        registry.versions("it's")


def test_a_failed_registration_leaves_nothing_half_written(registry: Registry) -> None:
    registry.register("demo", {"base": "b", "sources": FIGURES, "data": DATA}, None, None)
    with pytest.raises(RegistryError, match="registering a version of 'demo' failed"):
        registry.register("demo", {"base": "b", "sources": FIGURES}, None, "1")  # no manifest
    assert registry.versions("demo") == ["1"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.uri)
    experiment = client.get_experiment_by_name("sd-serving-tuning")
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 1  # the failed run is deleted
