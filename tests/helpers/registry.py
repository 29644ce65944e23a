"""A model's versions in a real MLflow registry (sqlite, in a test's folder) with chosen
figures, as `sd-serving tune --register` would leave them: version 1 the base (champion), each
later one tuned from it (the last one the challenger)."""

from __future__ import annotations

from pathlib import Path

from serving.training.registry import CHALLENGER, CHAMPION, Registry

DATA = [{"role": "original", "path": "data/original", "sha256": "ab" * 32}]


def figures(**means: float) -> dict[str, dict[str, float]]:
    """Per-source figures with the given mean adherence (0 to 1)."""
    return {source: {"mean": mean, "images": 48.0} for source, mean in means.items()}


def registry_with(folder: Path, name: str, base: dict, *tuned: dict) -> Registry:
    """`base` figures for version 1 (champion); each of `tuned` a version whose parent is 1, with
    the base's figures as its parent's; the last one the challenger."""
    registry = Registry(f"sqlite:///{folder / 'mlflow.db'}")
    record = {"base": "models/demo", "sources": base, "data": DATA}
    first = registry.register(name, record, None, None).version
    registry.alias(name, CHAMPION, first)
    adapter = folder / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    for sources in tuned:
        record = {
            "base": "models/demo",
            "strategy": "stratified",
            "config": {"seed": 0},
            "data": DATA,
            "sources": sources,
            "parent_sources": base,
        }
        version = registry.register(name, record, adapter, first).version
        registry.alias(name, CHALLENGER, version)
    return registry
