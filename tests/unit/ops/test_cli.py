"""`sd-serving` commands that need no Ray: errors named, unreachable servers, bad settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serving.cli.main import FAMILY_NAMES
from serving.models.embedded import FAMILIES
from tests.helpers.local_service import LocalService


def sd_serving(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_reports_errors_and_unreachable_servers(local: LocalService) -> None:
    bad = sd_serving("generate", "x", "--steps", "0", "--url", local.url)
    assert bad.returncode == 1 and "steps" in bad.stderr and "between 1 and 150" in bad.stderr
    gone = sd_serving("generate", "x", "--url", "http://127.0.0.1:9")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
    gone_grpc = sd_serving("generate", "x", "--grpc", "--grpc-target", "127.0.0.1:9")
    assert gone_grpc.returncode == 1 and "UNAVAILABLE" in gone_grpc.stderr
    assert "127.0.0.1:9" in gone_grpc.stderr


def test_cli_names_an_unknown_model_and_the_served_ones(local: LocalService) -> None:
    for transport in (["--url", local.url], ["--grpc", "--grpc-target", local.grpc_target]):
        result = sd_serving("generate", "x", "--model", "sd-9", *transport)
        assert result.returncode == 1, transport
        assert "sd-9" in result.stderr and "sd-embedded" in result.stderr, result.stderr


def test_export_model_writes_each_family_as_its_diffusers_pipeline(tmp_path: Path) -> None:
    assert FAMILY_NAMES == FAMILIES  # --help lists them without importing torch
    result = sd_serving("export-model", str(tmp_path / "xl"), "--family", "sdxl")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    refused = sd_serving("export-model", str(tmp_path / "f"), "--family", "flux")
    assert refused.returncode == 2 and "invalid choice: 'flux'" in refused.stderr


def test_serve_refuses_a_variable_that_names_no_setting() -> None:
    env = {**os.environ, "SD_UNET_MAX_BATCH_SIZE": "4"}
    result = sd_serving("serve", env=env)
    assert result.returncode == 2
    assert "SD_UNET_MAX_BATCH_SIZE names no setting" in result.stderr
    assert "SD_UNET__MAX_BATCH_SIZE" in result.stderr


def test_world_writes_the_captioned_dataset_and_refuses_a_bad_size(tmp_path: Path) -> None:
    result = sd_serving("world", str(tmp_path / "world"), "--count", "5", "--size", "32")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "world" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 5 and json.loads(rows[0])["text"].endswith("background")
    refused = sd_serving("world", str(tmp_path / "w"), "--size", "4")
    assert refused.returncode == 2 and "--size" in refused.stderr
