"""One settings shape: per-stage knobs under their stage, and no SD_* variable ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import RENAMED, Settings, check_environment, setting_variables

README = Path(__file__).resolve().parents[3] / "README.md"


def test_overriding_one_stage_field_keeps_that_stages_other_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SD_UNET__NUM_GPUS", "0.5")
    monkeypatch.setenv("SD_UNET__TORCH_THREADS", "2")
    monkeypatch.setenv("SD_UNET__MAX_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.unet.num_gpus == 0.5 and settings.unet.torch_threads == 2
    assert settings.unet.max_batch_size == 4 and settings.unet.max_queue == 64
    assert settings.unet.max_ongoing_requests == 72  # the UNet's own default, not the base one
    assert settings.unet.target_ongoing_requests == 6
    assert settings.vae.max_ongoing_requests == 32 and settings.vae.max_batch_size == 4


def test_a_stage_given_as_json_merges_with_its_nested_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart sets SD_UNET as JSON (placement) and SD_UNET__* from its settings map."""
    monkeypatch.setenv("SD_UNET", '{"num_gpus": 0.8, "max_replicas": 4}')
    monkeypatch.setenv("SD_UNET__MAX_BATCH_SIZE", "16")
    unet = Settings().unet
    assert (unet.num_gpus, unet.max_replicas, unet.max_batch_size) == (0.8, 4, 16)


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("SD_UNET_MAX_BATCH_SIZE", "renamed SD_UNET__MAX_BATCH_SIZE"),
        ("SD_EMBEDDING_CACHE_SIZE", "renamed SD_TEXT_ENCODER__CACHE_SIZE"),
        ("SD_DECODER_MAX_BATCH_SIZE", "renamed SD_VAE__MAX_BATCH_SIZE"),
        ("SD_REQUEST_TIMEOUT", "did you mean SD_REQUEST_TIMEOUT_S?"),
        ("SD_UNET__MAX_BATCH", "did you mean SD_UNET__MAX_BATCH_SIZE?"),
        ("sd_limits__max_stepz", "did you mean SD_LIMITS__MAX_STEPS?"),
    ],
)
def test_a_variable_that_names_no_setting_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, hint: str
) -> None:
    monkeypatch.setenv(variable, "4")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert f"{variable} names no setting" in str(caught.value) and hint in str(caught.value)


def test_free_form_maps_and_known_names_pass() -> None:
    check_environment(
        {
            "SD_UNET__RESOURCES__POOL-GPU": "0.001",
            "SD_MODEL": "embedded",
            "SD_TEXT_ENCODER__CACHE_SIZE": "0",
            "HOME": "/root",
        }
    )


def test_every_variable_in_the_readme_names_a_setting() -> None:
    names, _ = setting_variables()
    documented = set(re.findall(r"`(SD_[A-Z0-9_]+)`", README.read_text()))
    documented = {name for name in documented if not name.endswith("_")}  # `SD_<STAGE>__…`
    assert len(documented) > 20
    assert documented - set(RENAMED) <= names, sorted(documented - set(RENAMED) - names)
