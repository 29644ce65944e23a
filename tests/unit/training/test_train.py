"""`sd-serving train` at tiny sizes: end to end, a pipeline diffusers loads, a loss log, and a
malformed dataset named by file and row."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from serving.training.dataset import DatasetError
from serving.training.evaluator import AttributeClassifier
from serving.training.train import (
    TrainConfig,
    TrainingError,
    read_dataset,
    train,
)
from serving.training.world import ATTRIBUTES, write_dataset

TINY = TrainConfig(
    image_size=32,
    vae_channels=(32, 32),
    unet_channels=(32, 32),
    text_width=32,
    text_layers=1,
    vae_steps=10,
    unet_steps=10,
    unet_steps_max=10,
    batch_size=4,
    vae_max_mse=1.0,  # ten steps reconstruct nothing yet; the check's failure has its own test
    vae_min_adherence=0.0,
    posterior_std=0.05,  # the option: the posterior starts narrow
)


@pytest.mark.parametrize("from_files", [False, True], ids=["world", "imagefolder"])
def test_a_short_run_writes_a_pipeline_diffusers_loads(
    tmp_path: Path, from_files: bool, evaluator: AttributeClassifier
) -> None:
    data = write_dataset(tmp_path / "data", count=12, seed=3, size=32) if from_files else None
    # On the world: conditioning checked every 5 steps, and weights stored in half precision.
    config = TINY if from_files else replace(TINY, eval_every=5, eval_steps=2, half_weights=True)
    output = train(tmp_path / "model", config, data, None if from_files else evaluator)
    pipe = StableDiffusionPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle on a white background",
        num_inference_steps=3,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the trained VAE's latents
    log = [json.loads(line) for line in (output / "train-log.jsonl").read_text().splitlines()]
    assert [sum(1 for e in log if e["stage"] == s) for s in (0, 1)] == [10, 10]
    assert all(np.isfinite(entry["loss"]) for entry in log if entry["stage"] < 2)
    (vae_check,) = [entry for entry in log if entry["stage"] == 3]
    assert vae_check["step"] == 9 and vae_check["posterior_std"] < 0.1  # the narrow start
    assert (set(ATTRIBUTES) <= vae_check.keys()) is not from_files  # scored on the world only
    checks = [entry for entry in log if entry["stage"] == 2]
    assert [entry["step"] for entry in checks] == ([] if from_files else [4, 9])
    assert all(0 <= entry[name] <= 1 for entry in checks for name in ATTRIBUTES)
    stored = load_file(str(output / "unet" / "diffusion_pytorch_model.safetensors"))
    assert next(iter(stored.values())).dtype == (torch.float32 if from_files else torch.float16)
    assert pipe.unet.dtype == torch.float32  # diffusers loads half-precision files as float32
    assert json.loads((output / "train-config.json").read_text())["unet_steps"] == 10
    assert {"vocab.json", "merges.txt"} <= {path.name for path in (output / "tokenizer").iterdir()}


@pytest.mark.parametrize(
    ("goal", "steps", "checks"), [(0.0, 4, [3]), (1.0, 12, [3, 7, 11])], ids=["met", "unmet"]
)
def test_the_denoiser_trains_past_its_minimum_until_every_attribute_meets_the_goal(
    tmp_path: Path, evaluator: AttributeClassifier, goal: float, steps: int, checks: list[int]
) -> None:
    config = replace(
        TINY,
        unet_steps=4,
        unet_steps_max=12,
        eval_every=4,
        eval_steps=2,
        check_seeds=(5,),
        goal_adherence=goal,
    )
    output = train(tmp_path / "model", config, None, evaluator)
    log = [json.loads(line) for line in (output / "train-log.jsonl").read_text().splitlines()]
    assert sum(1 for entry in log if entry["stage"] == 1) == steps
    assert [entry["step"] for entry in log if entry["stage"] == 2] == checks


def test_a_vae_that_fails_its_check_trains_more_then_stops_with_its_figures(
    tmp_path: Path, evaluator: AttributeClassifier
) -> None:
    config = replace(
        TINY, vae_steps=2, vae_steps_more=3, vae_steps_max=5, vae_max_mse=1e-6, vae_min_adherence=1
    )
    with pytest.raises(
        TrainingError, match=r"fails its check after 5 steps \(mse [0-9.]+, .*colour"
    ):
        train(tmp_path / "model", config, None, evaluator)
    assert not (tmp_path / "model").exists()  # nothing half-trained is written


def test_a_malformed_dataset_is_named_by_file_and_row(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"metadata\.jsonl: missing"):
        read_dataset(tmp_path, 32)
    data = write_dataset(tmp_path / "data", count=3, seed=0, size=32)
    metadata = data / "metadata.jsonl"
    rows = metadata.read_text().splitlines()
    metadata.write_text("\n".join([rows[0], json.dumps({"file_name": "images/000001.png"})]))
    with pytest.raises(DatasetError, match=r"metadata\.jsonl row 2: no text"):
        read_dataset(data, 32)
    (data / "images" / "000001.png").write_bytes(b"not a png")
    metadata.write_text("\n".join(rows[:2]))
    with pytest.raises(DatasetError, match=r"000001\.png \(row 2\): unreadable image"):
        read_dataset(data, 32)


def test_the_command_reports_a_bad_dataset_and_bad_numbers(tmp_path: Path) -> None:
    def sd_serving(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "serving.cli", "train", str(tmp_path / "m"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    missing = sd_serving("--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "metadata.jsonl: missing" in missing.stderr
    negative = sd_serving("--unet-steps", "-1")
    assert negative.returncode == 2 and "must be ≥ 0" in negative.stderr
    wide = sd_serving("--posterior-std", "2")
    assert wide.returncode == 2 and "--posterior-std must be in (0, 1]" in wide.stderr
