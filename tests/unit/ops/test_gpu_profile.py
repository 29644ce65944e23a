"""The GPU profile (`make bench-gpu`): its architectures are the published ones, and its code runs
end to end on this machine with `--tiny` (the embedded models, 128², 4 steps, on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from loadtest import gpu


@pytest.mark.parametrize(
    ("config", "params_m", "latent", "steps", "tflop"),
    [
        # SD 1.5: 859.52 M UNet parameters; ≈ 1.6 TFLOP per guided step at 512², 50 steps.
        (gpu.SD15_UNET, 859.52, 64, 50, 80.33),
        # SDXL base: 2567.46 M; ≈ 13.5 TFLOP per guided step at 1024² (the figure).
        (gpu.SDXL_UNET, 2567.46, 128, 30, 30 * 13.52),
    ],
    ids=["sd15", "sdxl"],
)
def test_the_profiles_unets_are_the_published_architectures(
    config: dict, params_m: float, latent: int, steps: int, tflop: float
) -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    measured = gpu.unet_tflop_per_image(dict(unet.config), latent, guided=True, steps=steps)
    assert measured == pytest.approx(tflop, rel=0.005)


def test_the_tiny_profile_runs_bare_and_served_and_writes_its_report(tmp_path: Path) -> None:
    results = gpu.run(["sd15", "sdxl"], True, tmp_path / "out", tmp_path / "models", None)
    written = json.loads((tmp_path / "out" / "gpu-tiny.json").read_text())
    assert written["summary"] == results["summary"]
    for name in ("sd15", "sdxl"):
        row = written["summary"][name]
        assert row["bare_images_per_s"] > 0 and row["served_c1_images_per_s"] > 0
        assert row["saturation_concurrency"] in (1, 4)
        assert row["saturation_p99_s"] >= row["saturation_p50_s"] > 0
        sweep = written["runs"][name]["served"]["sweep"]
        assert [r["concurrency"] for r in sweep] == [1, 4]
        assert [r["requests"] for r in sweep] == [1, 4]
    report = (tmp_path / "out" / "gpu-tiny.md").read_text()
    assert "| sd15 128², 4 steps |" in report and "| sdxl 128², 4 steps |" in report
