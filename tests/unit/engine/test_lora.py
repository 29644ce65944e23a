"""LoRA adapters in the engine: each request's image equals StableDiffusionPipeline's with that
adapter (and scale, and two together) loaded by `load_lora_weights`, alone and in a step-level
batch mixing other adapters and none; the kohya layout of an adapter gives the same image; the
resident set stays within its bounds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serving.dataplane.stages import DenoiseJob
from serving.engine.denoiser import ContinuousBatchingEngine
from serving.engine.lora import RowAdapters, into_unet, unet_adapters
from serving.errors import InvalidArgument
from serving.metrics import AdapterMetrics, MemoryMeter
from serving.models import loader
from serving.models.loras import LoraError, LoraLibrary
from tests.helpers.engine import CPU, Components
from tests.helpers.images import max_pixel_difference
from tests.helpers.loras import lora_reference, write_adapters

PROMPT = "a red circle on a white background"
STEPS = 8
CONTEXT = 256  # the embedded models' text width


@pytest.fixture(scope="module")
def library(components: Components, tmp_path_factory: pytest.TempPathFactory) -> LoraLibrary:
    return write_adapters(components.source, tmp_path_factory.mktemp("loras"))


def engine_with(
    components: Components, library: LoraLibrary, **bounds: int
) -> ContinuousBatchingEngine:
    """An engine over a UNet of its own (adapters are loaded into it)."""
    return ContinuousBatchingEngine(
        loader.load_unet(components.source, CPU),
        components.schedulers,
        CPU,
        vae_scale_factor=8,
        max_batch_size=8,
        max_queue=16,
        adapters=unet_adapters(
            library,
            "sd",
            max_resident=bounds.get("max_resident", 8),
            max_resident_bytes=bounds.get("max_resident_bytes", 1 << 30),
            context_dim=CONTEXT,
        ),
    )


def job(components: Components, seed: int, loras: tuple[tuple[str, float], ...]) -> DenoiseJob:
    return replace(components.job(PROMPT, steps=STEPS, seed=seed), loras=loras)


def denoised(
    components: Components, engine: ContinuousBatchingEngine, jobs: list[DenoiseJob]
) -> list[np.ndarray]:
    tickets = [engine.submit(each) for each in jobs]
    while not all(ticket.future.done() for ticket in tickets):
        engine.step()
    return components.decoder.decode([ticket.future.result() for ticket in tickets])


def reference(
    components: Components, library: LoraLibrary, seed: int, loras: tuple[tuple[str, float], ...]
) -> np.ndarray:
    return lora_reference(components.source, library, PROMPT, seed=seed, loras=loras, steps=STEPS)


CASES = [
    (11, (("style-a", 1.0),)),
    (12, (("style-b", 0.6),)),
    (13, ()),
    (14, (("style-a", -0.8), ("style.c", 1.5))),
]


def test_each_request_in_a_mixed_batch_equals_the_pipeline_with_its_adapters(
    components: Components, library: LoraLibrary
) -> None:
    engine = engine_with(components, library)
    together = denoised(components, engine, [job(components, seed, loras) for seed, loras in CASES])
    plain = reference(components, library, 11, ())
    for (seed, loras), image in zip(CASES, together, strict=True):
        expected = reference(components, library, seed, loras)
        assert max_pixel_difference(image, expected) <= 1, loras
        if loras:  # the adapter really changes the picture (else parity would say nothing)
            assert max_pixel_difference(expected, reference(components, library, seed, ())) > 10
    assert max_pixel_difference(together[0], plain) > 10


def test_a_request_alone_equals_itself_in_the_mixed_batch(
    components: Components, library: LoraLibrary
) -> None:
    engine = engine_with(components, library)
    together = denoised(components, engine, [job(components, seed, loras) for seed, loras in CASES])
    for (seed, loras), image in zip(CASES, together, strict=True):
        (alone,) = denoised(components, engine, [job(components, seed, loras)])
        assert max_pixel_difference(alone, image) <= 1


def test_the_kohya_layout_of_an_adapter_gives_the_same_image(
    components: Components, library: LoraLibrary
) -> None:
    assert library.get("style-a-kohya").layout == "kohya"
    engine = engine_with(components, library)
    kohya, diffusers = denoised(
        components,
        engine,
        [job(components, 5, (("style-a-kohya", 0.7),)), job(components, 5, (("style-a", 0.7),))],
    )
    assert max_pixel_difference(kohya, diffusers) <= 1


def test_resident_adapters_stay_within_their_count_and_the_least_recent_goes(
    components: Components, library: LoraLibrary
) -> None:
    meter = MemoryMeter()
    unet = loader.load_unet(components.source, CPU)
    adapters = RowAdapters(
        unet,
        library,
        into_unet("sd"),
        max_resident=2,
        max_resident_bytes=1 << 30,
        context_dim=CONTEXT,
        metrics=AdapterMetrics.create(meter, "unet"),
    )
    for name in ("style-a", "style-b", "style-a", "style.c"):
        adapters.ensure([name])
    assert adapters.resident == ["style-a", "style.c"]  # style-b was least recently used
    assert meter.value("sd_lora_lookups", stage="unet", result="hit") == 1
    assert meter.value("sd_lora_lookups", stage="unet", result="miss") == 3
    assert meter.value("sd_lora_evictions", stage="unet") == 1
    assert meter.value("sd_lora_resident", stage="unet") == 2
    adapters.ensure(["style-b"], in_use=["style-a", "style.c"])  # both in use: none goes
    assert sorted(adapters.resident) == ["style-a", "style-b", "style.c"]
    size = library.get("style-a").size_bytes
    by_bytes = RowAdapters(
        loader.load_unet(components.source, CPU),
        library,
        into_unet("sd"),
        max_resident=8,
        max_resident_bytes=size + 1,
        context_dim=CONTEXT,
    )
    by_bytes.ensure(["style-a"])
    by_bytes.ensure(["style-b"])
    assert by_bytes.resident == ["style-b"]


def test_an_adapter_that_cannot_load_fails_its_request_only(
    components: Components, library: LoraLibrary, tmp_path: Path
) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "not-lora.safetensors"))
    for name in ("style-a", "style-b"):
        (tmp_path / f"{name}.safetensors").symlink_to(library.get(name).path)
    broken = LoraLibrary(tmp_path)
    with pytest.raises(LoraError, match="not a readable safetensors"):
        broken.get("broken")
    with pytest.raises(LoraError, match="no LoRA weights"):
        broken.get("not-lora")
    engine = engine_with(components, broken)
    tickets = [
        engine.submit(job(components, 1, (("broken", 1.0),))),
        engine.submit(job(components, 2, (("missing", 1.0),))),
        engine.submit(job(components, 3, (("style-a", 1.0),))),
    ]
    while not all(ticket.future.done() for ticket in tickets):
        engine.step()
    for ticket, why in zip(tickets[:2], ("not a readable", "no adapter 'missing'"), strict=True):
        error = ticket.future.exception()
        assert isinstance(error, InvalidArgument) and error.field == "loras", error
        assert why in error.message
    assert tickets[2].future.result().shape == (4, 16, 16)


def test_an_adapter_for_another_family_is_refused_naming_it(
    components: Components, library: LoraLibrary
) -> None:
    unet = loader.load_unet(components.source, CPU)
    adapters = RowAdapters(
        unet, library, into_unet("sd"), max_resident=2, max_resident_bytes=1 << 30, context_dim=768
    )
    with pytest.raises(LoraError, match=r"style-a.*is for context-256 \(text width 256\).*768"):
        adapters.ensure(["style-a"])
