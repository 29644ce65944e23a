"""LoRA adapters applied per batch row: requests with different adapters (or none) share one
forward of the UNet (or the text encoder).

Adapters are loaded into the model with diffusers' own loaders (`load_lora_into_unet`,
`load_lora_into_text_encoder`), so each adapted layer is PEFT's LoraLayer with the adapter's
`lora_A`, `lora_B` and `scaling` exactly as `pipeline.load_lora_weights` makes them. PEFT's own
application is switched off (it adds the active adapters to every row); instead a forward hook on
each adapted layer adds, for each group of rows that share an (adapter, scale), the group's
low-rank update: `base(x) + B(A(x[rows])) * scaling * scale`, the arithmetic PEFT does for
`set_adapters([...], weights)`, only on the rows that asked for it. A batch where every row
asks for the same adapters does one matmul per layer and adapter over the whole batch.

Plain torch, no Ray. One thread (the engine's) loads, evicts and runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from serving.metrics import AdapterMetrics, Meter
from serving.models import loader
from serving.models.loras import LoraError, LoraInfo, LoraLibrary
from serving.settings import Settings, TextEncoderStage, UNetStage

logger = logging.getLogger(__name__)

# A request's adapters: (name, scale) pairs, in the order the request gave them.
Loras = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class _Group:
    """Rows that add one adapter at one scale: all of them (None) or these indices."""

    name: str
    scale: float
    rows: torch.Tensor | None


# Loads an adapter's weights into the model under a PEFT adapter name (the family's diffusers
# loader).
LoadInto = Callable[[torch.nn.Module, str, LoraInfo], None]


class RowAdapters:
    """The adapters resident in one model, a bounded LRU (count and bytes), and their per-row
    application for the forward under `applied`."""

    def __init__(
        self,
        model: torch.nn.Module,
        library: LoraLibrary,
        load_into: LoadInto,
        *,
        max_resident: int,
        max_resident_bytes: int,
        context_dim: int | None = None,
        metrics: AdapterMetrics | None = None,
    ) -> None:
        """`context_dim`: a UNet's text width, to check adapters against its layers first (a
        text encoder's adapters are checked by the loader alone)."""
        self._model = model
        self._layers = {
            name.replace(".", "_"): getattr(
                module, "in_features", getattr(module, "in_channels", 0)
            )
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        }
        self._library = library
        self._load_into = load_into
        self._max_resident = max_resident
        self._max_bytes = max_resident_bytes
        self._context_dim = context_dim
        self._metrics = metrics
        self._resident: OrderedDict[str, LoraInfo] = OrderedDict()
        # PEFT's name for each resident adapter: module names cannot hold the dots that file
        # names may (`style.v2`).
        self._slots: dict[str, str] = {}
        self._loaded = 0
        self._hooked: set[int] = set()
        self._groups: list[_Group] = []

    @property
    def resident(self) -> list[str]:
        """Resident adapters, least recently used first."""
        return list(self._resident)

    def ensure(self, names: Iterable[str], in_use: Iterable[str] = ()) -> None:
        """Make `names` resident, loading what is missing and evicting the least recently used
        adapters that no running request (`in_use`) needs; LoraError for an adapter that cannot
        be loaded (missing, broken, for another model)."""
        keep = set(in_use)
        for name in names:
            keep.add(name)
            info = self._resident.get(name)
            if self._metrics is not None:
                self._metrics.record_lookup(info is not None)
            if info is not None:
                self._resident.move_to_end(name)
                continue
            self._load(name, keep)

    def _load(self, name: str, keep: set[str]) -> None:
        try:
            info = self._library.get(name)
        except KeyError:
            raise LoraError(f"no adapter {name!r} in the library") from None
        misfit = None if self._context_dim is None else info.misfit(self._context_dim, self._layers)
        if misfit is not None:
            raise LoraError(
                f"adapter {name!r} {misfit}; this model's text width is {self._context_dim}"
            )
        self._make_room(info, keep)
        started = time.perf_counter()
        self._loaded += 1
        slot = f"lora{self._loaded}"
        try:
            self._load_into(self._model, slot, info)
        except Exception as error:
            self._forget(slot)  # whatever part of it was injected
            raise LoraError(
                f"adapter {name!r} does not fit this model's layers: {_gist(error)}"
            ) from None
        self._switch_peft_off_and_hook()
        self._resident[name] = info
        self._slots[name] = slot
        if self._metrics is not None:
            self._metrics.record_load(time.perf_counter() - started)
            self._record_resident()
        logger.info("loaded adapter %s (rank %s, %s bytes)", name, info.rank, info.size_bytes)

    def _make_room(self, incoming: LoraInfo, keep: set[str]) -> None:
        def over() -> bool:
            size = sum(info.size_bytes for info in self._resident.values())
            full = len(self._resident) >= self._max_resident
            return full or size + incoming.size_bytes > self._max_bytes

        for name in list(self._resident):
            if not over():
                return
            if name not in keep:
                self._forget(self._slots.pop(name))
                del self._resident[name]
                if self._metrics is not None:
                    self._metrics.record_eviction()
        # Everything resident is in use: go over the bound rather than fail a request.

    def _forget(self, slot: str) -> None:
        for module in self._model.modules():
            if isinstance(module, BaseTunerLayer) and slot in getattr(module, "lora_A", {}):
                module.delete_adapter(slot)
        getattr(self._model, "peft_config", {}).pop(slot, None)

    def _switch_peft_off_and_hook(self) -> None:
        for module in self._model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(False)  # the hook adds the updates, per row
                if id(module) not in self._hooked:
                    module.register_forward_hook(self._add_updates)
                    self._hooked.add(id(module))

    def publish(self) -> None:
        """Republish the resident gauges (Ray exports a gauge only while it is being set)."""
        self._record_resident()

    def _record_resident(self) -> None:
        if self._metrics is not None:
            resident = list(self._resident.values())  # a snapshot: the publisher is a timer
            self._metrics.record_resident(len(resident), sum(info.size_bytes for info in resident))

    @contextlib.contextmanager
    def applied(self, rows: Sequence[Loras]) -> Iterator[None]:
        """Within this block the model's forward adds row i's adapters (`rows[i]`) to row i."""
        device = next(self._model.parameters()).device
        in_slots = [tuple((self._slots[name], scale) for name, scale in row) for row in rows]
        self._groups = _groups(in_slots, device)
        try:
            yield
        finally:
            self._groups = []

    def _add_updates(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        if not self._groups:
            return output
        x = args[0]
        for group in self._groups:
            if group.name not in module.lora_A:
                continue
            down, up = module.lora_A[group.name], module.lora_B[group.name]
            part = x if group.rows is None else x.index_select(0, group.rows)
            scale = module.scaling[group.name] * group.scale
            update = up(down(part.to(down.weight.dtype))) * scale
            if group.rows is None:
                output = output + update.to(output.dtype)
            else:
                output = output.index_add(0, group.rows, update.to(output.dtype))
        return output


def _gist(error: Exception, limit: int = 300) -> str:
    """An error's first lines (torch lists every mismatched tensor), cut to `limit` chars."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _groups(rows: Sequence[Loras], device: torch.device) -> list[_Group]:
    """The rows of each (adapter, scale), in first-seen order; None rows when it is all of them."""
    by_pair: dict[tuple[str, float], list[int]] = {}
    for row, loras in enumerate(rows):
        for pair in loras:
            by_pair.setdefault(pair, []).append(row)
    groups = []
    for (name, scale), indices in by_pair.items():
        every = len(indices) == len(rows)
        groups.append(_Group(name, scale, None if every else torch.tensor(indices, device=device)))
    return groups


def _pipeline(family: str) -> Any:
    """The family's diffusers pipeline class, whose LoRA loaders (and kohya conversion) are
    the ones its users' `load_lora_weights` runs."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def into_unet(family: str) -> LoadInto:
    """Loads an adapter's UNet weights (a text-encoder-only adapter adds nothing here)."""
    pipeline = _pipeline(family)

    def load(unet: torch.nn.Module, slot: str, info: LoraInfo) -> None:
        state, alphas, metadata = pipeline.lora_state_dict(
            str(info.path), return_lora_metadata=True
        )
        if any(key.startswith(f"{pipeline.unet_name}.") for key in state):
            pipeline.load_lora_into_unet(state, alphas, unet, adapter_name=slot, metadata=metadata)

    return load


@contextlib.contextmanager
def transformers_accepts_this_peft() -> Iterator[None]:
    """diffusers loads text-encoder adapters through transformers' PEFT integration, whose
    version check (transformers 5.24) asks for peft 0.22, newer than PyPI has for this build;
    loading works with the pinned 0.21.2 (the parity tests hold the images to diffusers')."""
    import transformers.integrations.peft as integration

    original = integration.check_peft_version
    integration.check_peft_version = lambda *args, **kwargs: None
    try:
        yield
    finally:
        integration.check_peft_version = original


def into_text_encoder(family: str, index: int) -> LoadInto:
    """Loads an adapter's weights for the family's `index`-th text encoder (SDXL has two);
    an adapter without any adds nothing here."""
    pipeline = _pipeline(family)
    prefix = "text_encoder" if index == 0 else "text_encoder_2"

    def load(encoder: torch.nn.Module, slot: str, info: LoraInfo) -> None:
        state, alphas, metadata = pipeline.lora_state_dict(
            str(info.path), return_lora_metadata=True
        )
        if any(key.startswith(f"{prefix}.") for key in state):
            with transformers_accepts_this_peft():
                pipeline.load_lora_into_text_encoder(
                    state,
                    alphas,
                    encoder,
                    prefix=prefix,
                    adapter_name=slot,
                    metadata=metadata,
                )

    return load


def text_adapters(
    library: LoraLibrary,
    family: str,
    *,
    max_resident: int,
    max_resident_bytes: int,
    metrics: AdapterMetrics | None = None,
) -> Callable[[list[torch.nn.Module]], list[RowAdapters]]:
    """What the text-encoder runner calls with its encoders to get each one's adapters."""

    def over(encoders: list[torch.nn.Module]) -> list[RowAdapters]:
        return [
            RowAdapters(
                encoder,
                library,
                into_text_encoder(family, index),
                max_resident=max_resident,
                max_resident_bytes=max_resident_bytes,
                metrics=metrics if index == 0 else None,  # one adapter counts once
            )
            for index, encoder in enumerate(encoders)
        ]

    return over


def text_adapters_from_settings(
    settings: Settings, stage: TextEncoderStage, source: str, meter: Meter
) -> Callable[[list[torch.nn.Module]], list[RowAdapters]] | None:
    """The text encoders' adapters from SD_LORA_DIR; None without a directory."""
    if settings.lora_dir is None:
        return None
    return text_adapters(
        LoraLibrary(settings.lora_dir),
        loader.read_model_info(source).family,
        max_resident=stage.max_resident_loras,
        max_resident_bytes=stage.max_resident_lora_bytes,
        metrics=AdapterMetrics.create(meter, "text_encoder"),
    )


def unet_adapters(
    library: LoraLibrary,
    family: str,
    *,
    max_resident: int,
    max_resident_bytes: int,
    context_dim: int,
    metrics: AdapterMetrics | None = None,
) -> Callable[[torch.nn.Module], RowAdapters]:
    """What the engine calls with its UNet to get the UNet's adapters."""

    def over(unet: torch.nn.Module) -> RowAdapters:
        return RowAdapters(
            unet,
            library,
            into_unet(family),
            max_resident=max_resident,
            max_resident_bytes=max_resident_bytes,
            context_dim=context_dim,
            metrics=metrics,
        )

    return over


def unet_adapters_from_settings(
    settings: Settings, stage: UNetStage, source: str, meter: Meter
) -> Callable[[torch.nn.Module], RowAdapters] | None:
    """The UNet's adapters from SD_LORA_DIR and the stage's bounds; None without a directory."""
    if settings.lora_dir is None:
        return None
    info = loader.read_model_info(source)
    return unet_adapters(
        LoraLibrary(settings.lora_dir),
        info.family,
        max_resident=stage.max_resident_loras,
        max_resident_bytes=stage.max_resident_lora_bytes,
        context_dim=info.context_dim,
        metrics=AdapterMetrics.create(meter, "unet"),
    )
