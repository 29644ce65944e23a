"""`sd-serving tune` at a reduced size: every strategy tunes the demo model on the scenario's new
concept, the report is written, the default strategy keeps the original source better than
`new-only`, and the adapter it writes loads where adapters load. Bad data is refused, naming it,
before anything trains."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from serving.cli.main import main
from serving.models.embedded import DEMO_MODEL
from serving.training.registry import CHALLENGER, CHAMPION, Registry
from serving.training.world import NEW_SHAPES, NEW_SOURCE, SOURCE, combinations, write_dataset

# `make tune-report` runs the same command at full size: 240 examples a source, a skewed batch,
# 600 steps of 16, validation drawn with two seeds at 20 steps. Here the new batch is crosses
# only, which new-only forgets by quickly, and validation is drawn once at 10 steps.
EVALUATION = ["--validation-fraction", "0.25", "--eval-seeds", "1", "--eval-steps", "10"]
TUNING = ["--steps", "100", "--batch-size", "8", *EVALUATION]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scenario")
    original = write_dataset(root / "original", count=96, seed=0)
    crosses = combinations(shapes=NEW_SHAPES)
    new = write_dataset(root / "new", count=96, seed=1, drawn_from=crosses, source=NEW_SOURCE)
    return original, new


@pytest.fixture(scope="module")
def compared(scenario: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    original, new = scenario
    output = tmp_path_factory.mktemp("tuned")
    argv = ["tune", str(output), "--original", str(original), "--new", str(new), "--compare"]
    registry = ["--register", "demo", "--registry-uri", registry_uri(output)]
    assert main([*argv, *TUNING, *registry]) == 0
    return output


def registry_uri(output: Path) -> str:
    return f"sqlite:///{output / 'registry' / 'mlflow.db'}"


def test_every_strategy_is_tuned_and_reported(compared: Path) -> None:
    results = json.loads((compared / "report.json").read_text())
    assert list(results["runs"]) == ["new-only", "concat", "stratified"]
    assert results["original_sources"] == [SOURCE] and results["new_sources"] == [NEW_SOURCE]
    for strategy, run in results["runs"].items():
        assert (compared / strategy / "pytorch_lora_weights.safetensors").is_file()
        recorded = json.loads((compared / strategy / "tune.json").read_text())
        assert recorded["strategy"] == strategy
        assert [entry["role"] for entry in recorded["data"]] == ["original", "new"]
        assert all(len(entry["sha256"]) == 64 for entry in recorded["data"])
        assert set(run["sources"]) == {SOURCE, NEW_SOURCE}
        assert {"circle", "square", "triangle", "cross"} <= set(run["classes"])
    report = (compared / "report.md").read_text()
    assert "| stratified |" in report and "## The bias question" in report
    assert (compared / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_base_and_the_stratified_run_are_registered_as_champion_and_challenger(
    compared: Path,
) -> None:
    results = json.loads((compared / "report.json").read_text())
    registry = Registry(registry_uri(compared))
    champion, challenger = registry.get("demo", CHAMPION), registry.get("demo", CHALLENGER)
    assert (champion.version, champion.strategy) == ("1", "base")
    assert (challenger.version, challenger.strategy, challenger.parent) == ("2", "stratified", "1")
    assert challenger.sources == results["runs"]["stratified"]["sources"]
    assert challenger.parent_sources == champion.sources == results["before"]["sources"]
    files = registry.download("demo", CHALLENGER, compared / "downloaded")
    weights = "pytorch_lora_weights.safetensors"
    assert (files / weights).read_bytes() == (compared / "stratified" / weights).read_bytes()


def test_stratified_keeps_the_original_source_better_than_new_only(compared: Path) -> None:
    results = json.loads((compared / "report.json").read_text())
    runs = results["runs"]
    kept = runs["stratified"]["sources"][SOURCE]["mean"]
    forgotten = runs["new-only"]["sources"][SOURCE]["mean"]
    assert kept > forgotten, (kept, forgotten)
    # And both learnt something of the new concepts the base never saw.
    before = results["before"]["sources"][NEW_SOURCE]["mean"]
    assert runs["new-only"]["sources"][NEW_SOURCE]["mean"] > before


def test_the_tuned_adapter_loads_into_the_models_pipeline_and_changes_its_image(
    compared: Path,
) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def image() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        prompt = "a red cross on a white background"
        return pipe(prompt, num_inference_steps=4, generator=generator, output_type="pt").images

    plain = image()
    pipe.load_lora_weights(str(compared / "stratified"))
    assert (image() - plain).abs().max() > 0.05


def test_bad_data_and_weights_are_refused_before_training(
    scenario: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, new = scenario
    argv = ["tune", str(tmp_path / "out"), "--original", str(original), "--new"]
    unsourced = tmp_path / "unsourced"
    write_dataset(unsourced, count=4, seed=2)
    rows = (unsourced / "metadata.jsonl").read_text().replace(f'"source": "{SOURCE}"', '"x": 1')
    (unsourced / "metadata.jsonl").write_text(rows)
    cases = [
        ([str(unsourced)], r"metadata\.jsonl row 1: no source"),
        ([str(original)], f"source '{SOURCE}' is the original data's"),
        ([str(new), "--weight", f"{NEW_SOURCE}=-1"], "weights must be ≥ 0"),
        ([str(new), "--weight", f"{NEW_SOURCE}=0", "--weight", f"{SOURCE}=0"], "is 0"),
        ([str(new), "--weight", "nobody=1"], r"unknown source\(s\) \['nobody'\]"),
        ([str(new), "--weight", "nobody"], "expected SOURCE=NUMBER"),
        ([str(tmp_path / "missing")], r"metadata\.jsonl: missing"),
        ([str(new), "--steps", "0"], "must be ≥ 1"),
        ([str(new), "--eval-seeds", "0"], "--eval-seeds must be ≥ 1"),
        ([str(new), "--eval-steps", "0"], "--eval-steps must be ≥ 1"),
        ([str(new), "--learning-rate=-1e-3"], "--learning-rate must be > 0"),
        (
            [str(new), "--register", "no/such", "--registry-uri", registry_uri(tmp_path)],
            "model name 'no/such': use 1 to 64 letters",
        ),
    ]
    for extra, message in cases:
        assert main([*argv, *extra]) == 2, extra
        error = capsys.readouterr().err
        assert re.search(message, error), (extra, error)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_tuned_champion_is_what_the_next_version_is_compared_with(
    compared: Path, scenario: tuple[Path, Path], tmp_path: Path
) -> None:
    """With version 2 (an adapter) as champion, the next run's "before" is the base with that
    adapter, on the same validation split: version 2's own figures."""
    # A copy of the registry's database, so the other tests' aliases stay as they were.
    shutil.copytree(compared / "registry", tmp_path / "registry", ignore=lambda *_: ["artifacts"])
    registry = Registry(registry_uri(tmp_path))
    registry.alias("demo", CHAMPION, "2")
    original, new = scenario
    argv = ["tune", str(tmp_path / "next"), "--original", str(original), "--new", str(new)]
    argv += ["--steps", "2", *EVALUATION, "--register", "demo"]
    assert main([*argv, "--registry-uri", registry_uri(tmp_path)]) == 0
    third, second = registry.get("demo", CHALLENGER), registry.get("demo", "2")
    assert (third.version, third.parent) == ("3", "2")
    for source, figures in second.sources.items():
        assert third.parent_sources[source]["mean"] == pytest.approx(figures["mean"], abs=0.03)
    assert registry.get("demo", CHAMPION).version == "2"  # tuning never moves the champion


def test_a_full_tune_writes_a_whole_model(scenario: tuple[Path, Path], tmp_path: Path) -> None:
    original, new = scenario
    argv = ["tune", str(tmp_path), "--original", str(original), "--new", str(new), "--full"]
    assert main([*argv, "--steps", "2", "--learning-rate", "1e-5", *EVALUATION[2:]]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "stratified")
    assert pipe.unet.dtype == torch.float32 and (tmp_path / "stratified" / "tune.json").is_file()
