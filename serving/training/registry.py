"""Model versions in MLflow's registry: every tuned model is a version with its data manifest
(each batch's sha256, the mixing weights, the seed), its parent version and its per-source
validation figures; the `champion` alias names the version served, `challenger` the one under
canary. A local sqlite store by default (`SD_REGISTRY_URI`), or a shared tracking server.

The first registration of a name records the base model itself as version 1, the champion: its
artifact is a `base.json` naming the base directory, and its figures are the base's on the same
validation set, so a challenger is always compared like for like.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Model names travel in URLs and in "name@version": letters, digits, - and _.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "sd-serving-tuning"


class RegistryError(LookupError):
    """An unknown model, version or alias, or a registration that could not be completed."""


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    parent: str | None
    strategy: str  # "base" for version 1
    sources: dict[str, dict[str, float]]  # per-source validation figures
    # Its parent's figures on the same validation set (what promotion compares against).
    parent_sources: dict[str, dict[str, float]]
    run_id: str


def default_uri(cache_dir: Path) -> str:
    return f"sqlite:///{cache_dir / 'registry' / 'mlflow.db'}"


class Registry:
    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        # A local store keeps its artifacts beside its database (MLflow's default is ./mlruns,
        # under whatever folder the command runs in); a server decides for itself.
        self._artifacts: str | None = None
        if uri.startswith("sqlite:///"):
            folder = Path(uri.removeprefix("sqlite:///")).parent
            folder.mkdir(parents=True, exist_ok=True)
            self._artifacts = (folder.resolve() / "artifacts").as_uri()
        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def register(
        self,
        name: str,
        record: Mapping[str, Any],
        directory: Path | None,
        parent: str | None,
    ) -> Version:
        """A new version of `name`: `record` is a tuning run's (`tune.json`), `directory` its
        adapter or model (None for the base). All or nothing: a failure removes the run and any
        version it made."""
        _check(name)
        strategy = str(record.get("strategy", "base"))
        experiment = self._client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment(EXPERIMENT, artifact_location=self._artifacts)
        )
        run = self._client.create_run(experiment_id, run_name=f"{name}-{strategy}")
        run_id = run.info.run_id
        made: str | None = None
        try:
            for key, value in _params(record).items():
                self._client.log_param(run_id, key, value)
            for prefix, field in (("adherence", "sources"), ("parent.adherence", "parent_sources")):
                for source, figures in record.get(field, {}).items():
                    for metric, value in figures.items():
                        self._client.log_metric(run_id, f"{prefix}.{source}.{metric}", value)
            self._client.log_dict(run_id, dict(record), "tune.json")
            if directory is not None:
                self._client.log_artifacts(run_id, str(directory), "model")
            else:
                with tempfile.TemporaryDirectory() as scratch:
                    marker = Path(scratch) / "base.json"
                    marker.write_text(json.dumps({"base": str(record["base"])}) + "\n")
                    self._client.log_artifact(run_id, str(marker), "model")
            if self._client.search_registered_models(f"name = '{name}'") == []:
                self._client.create_registered_model(name)
            tags = {"strategy": strategy, "parent": parent or "", "base": str(record["base"])}
            tags |= {f"data.{i}.sha256": entry["sha256"] for i, entry in enumerate(record["data"])}
            version = self._client.create_model_version(
                name, f"runs:/{run_id}/model", run_id=run_id, tags=tags
            )
            made = str(version.version)
            self._client.set_terminated(run_id)
        except Exception as error:
            if made is not None:
                self._client.delete_model_version(name, made)
            self._client.delete_run(run_id)
            raise RegistryError(f"registering a version of {name!r} failed: {error}") from error
        return self.get(name, made)

    def get(self, name: str, reference: str) -> Version:
        """A version by number or alias ("champion", "challenger")."""
        from mlflow.exceptions import MlflowException

        _check(name)
        try:
            if reference.isdigit():
                found = self._client.get_model_version(name, reference)
            else:
                found = self._client.get_model_version_by_alias(name, reference)
        except MlflowException:
            raise RegistryError(
                f"model {name!r} has no version {reference!r}"
                + (f" (versions: {', '.join(self.versions(name))})" if self.versions(name) else "")
            ) from None
        run_id = str(found.run_id)
        run = self._client.get_run(run_id)
        figures: dict[str, dict[str, dict[str, float]]] = {"": {}, "parent.": {}}
        for key, value in run.data.metrics.items():
            prefix, _, rest = key.partition("adherence.")
            source, _, metric = rest.rpartition(".")
            figures[prefix].setdefault(source, {})[metric] = value
        return Version(
            name=name,
            version=str(found.version),
            parent=found.tags.get("parent") or None,
            strategy=found.tags.get("strategy", ""),
            sources=figures[""],
            parent_sources=figures["parent."],
            run_id=run_id,
        )

    def versions(self, name: str) -> list[str]:
        _check(name)
        found = self._client.search_model_versions(f"name = '{name}'")
        return sorted((str(version.version) for version in found), key=int)

    def alias(self, name: str, alias: str, version: str) -> None:
        self.get(name, version)  # an unknown version is refused before anything moves
        self._client.set_registered_model_alias(name, alias, version)

    def remove_alias(self, name: str, alias: str) -> None:
        """The alias gone, if it was set."""
        from mlflow.exceptions import MlflowException

        _check(name)
        with contextlib.suppress(MlflowException):  # no such alias: nothing to remove
            self._client.delete_registered_model_alias(name, alias)

    def download(self, name: str, reference: str, destination: Path) -> Path:
        """The version's files (its adapter, or `base.json`) under `destination`."""
        version = self.get(name, reference)
        return Path(self._client.download_artifacts(version.run_id, "model", str(destination)))


def _check(name: str) -> None:
    if not NAME.fullmatch(name):
        raise RegistryError(
            f"model name {name!r}: use 1 to 64 letters, digits, '-' or '_', starting with a "
            "letter or digit"
        )


def _params(record: Mapping[str, Any]) -> dict[str, str]:
    config = record.get("config", {})
    return {
        "base": str(record["base"]),
        "strategy": str(record.get("strategy", "base")),
        **{key: json.dumps(config[key]) for key in sorted(config)},
    }
