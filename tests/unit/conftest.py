"""The fast tier: no Ray, no server processes. The engines run in this process; the ingress runs
as a real HTTP and gRPC server in a thread of this process (tests/helpers/local_service.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

from serving.engine.decoder import VaeDecoderRunner
from serving.engine.schedulers import SchedulerFactory
from serving.engine.text import TextEncoderRunner
from serving.models import loader
from tests.helpers.engine import CPU, Components
from tests.helpers.local_service import CORS_ORIGIN, WEBHOOK_SECRET, LocalService, local_service
from tests.helpers.redis_server import redis_server


@pytest.fixture(scope="session")
def components(embedded_model_dir: Path) -> Components:
    source = str(embedded_model_dir)
    pipeline = StableDiffusionPipeline.from_pretrained(source)
    pipeline.set_progress_bar_config(disable=True)
    return Components(
        source=source,
        text=TextEncoderRunner.load(source, CPU, cache_size=64),
        decoder=VaeDecoderRunner.load(source, CPU),
        unet=loader.load_unet(source, CPU),
        schedulers=SchedulerFactory(loader.load_scheduler_config(source)),
        pipeline=pipeline,
    )


@pytest.fixture(scope="session")
def local(embedded_model_dir: Path) -> Iterator[LocalService]:
    """The ingress with the defaults `make serve` uses (plus a webhook secret, webhook receivers
    on this machine allowed, and CORS)."""
    with local_service(
        embedded_model_dir,
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow=["127.0.0.1/32"],
        cors_allow_origins=[CORS_ORIGIN],
    ) as service:
        yield service


@pytest.fixture(scope="session")
def durable(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalService]:
    """`local`'s settings with shared state in a real Redis: jobs run from the durable queue,
    whose leases lapse after 2 s (tests/unit/http/test_durable_jobs.py)."""
    base = tmp_path_factory.mktemp("durable")
    with (
        redis_server(base) as url,
        local_service(
            embedded_model_dir,
            webhook_secret=WEBHOOK_SECRET,
            webhook_allow=["127.0.0.1/32"],
            cors_allow_origins=[CORS_ORIGIN],
            redis_url=url,
            image_store_url=(base / "images").as_uri(),
            job_lease_s=2.0,
        ) as service,
    ):
        yield service


@pytest.fixture(scope="session")
def uncached(embedded_model_dir: Path) -> Iterator[LocalService]:
    """The ingress without a result cache: every request renders, so 'same image' tests compare
    rendered images, never a cached copy."""
    with local_service(embedded_model_dir, result_cache_size=0) as service:
        yield service


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """The ingress on the default model (the demo model) with the fuzz runs' tiny limits: a
    request that renders costs milliseconds."""
    from loadtest.fuzz import TINY_DEFAULTS, TINY_LIMITS

    with local_service(
        None,
        kserve_model_dir=tmp_path_factory.mktemp("no-mnt-models"),
        result_cache_size=0,
        limits=TINY_LIMITS,
        defaults=TINY_DEFAULTS,
    ) as service:
        yield service
