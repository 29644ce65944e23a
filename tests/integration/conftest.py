"""The integration tier: the real service, started once per session the way `make serve` starts
it. Only what needs Ray lives here: stage wiring through handles, streaming and cancellation
across processes, Ray's gRPC proxy, signals and shutdown, Prometheus, the browser, locust and the
CLI. Everything else runs in the fast tier (tests/unit)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.models.loras import LoraLibrary
from tests.helpers.live_service import (
    DEFAULT_MODEL,
    SDXL_MODEL,
    WEBHOOK_SECRET,
    RunningService,
    start_service,
)
from tests.helpers.loras import write_adapters

# Two models side by side, each with its own three deployments; on 2 CPUs their stages ask for
# fractions of Ray's logical CPUs so all eight replicas fit.
SMALL = {"text_encoder": {"num_cpus": 0.1}, "unet": {"num_cpus": 0.5}, "vae": {"num_cpus": 0.1}}


# The default model's versions: 1 its weights (the champion, what requests naming none get), 2
# and 3 adapters over them (`name@2`); test_prometheus.py's promotion test gives 3 a file the
# UNet refuses.
ROLLOUT = {
    "versions": {"1": {}, "2": {"adapter": "style-a"}, "3": {"adapter": "failing-v3"}},
    "champion": "1",
}


@pytest.fixture(scope="session")
def lora_library(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> LoraLibrary:
    """LoRA adapters for the default model (tests/helpers/loras.py), the service's SD_LORA_DIR."""
    return write_adapters(str(embedded_model_dir), tmp_path_factory.mktemp("loras"))


# Package scope: the service stops after the last integration test, so its Ray processes do not
# share the CPU with the unit tests that run after them.
@pytest.fixture(scope="package")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    embedded_model_dir: Path,
    family_dirs: dict[str, Path],
    lora_library: LoraLibrary,
) -> Iterator[RunningService]:
    """The service with the defaults `make serve` uses, serving the random-weight embedded SD and
    SDXL models as the session exported them, plus a webhook secret (receivers on loopback
    allowed), and without a result cache: every request here renders through the stages."""
    models = {
        DEFAULT_MODEL: {"source": str(embedded_model_dir), "rollout": ROLLOUT, **SMALL},
        SDXL_MODEL: {"source": str(family_dirs["sdxl"]), **SMALL},
    }
    settings = {
        "SD_MODELS": json.dumps(models),
        "SD_LORA_DIR": str(lora_library.directory),
        # Two resident adapters per UNet replica: the traffic of test_prometheus.py, three
        # adapters in turn, makes the replica evict one (the eviction series then has data).
        "SD_UNET__MAX_RESIDENT_LORAS": "2",
        "SD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SD_WEBHOOK_ALLOW": '["127.0.0.1/32"]',  # the tests' receivers
        "SD_RESULT_CACHE_SIZE": "0",
    }
    with start_service(tmp_path_factory.getbasetemp() / "model-cache", settings) as running:
        yield running
