"""The adapter library: LoRA files under SD_LORA_DIR, what each one is, and its weights as
diffusers' loaders read them.

An adapter is a `.safetensors` file (its name is the file's name without the extension) or a
folder holding diffusers' `pytorch_lora_weights.safetensors` (its name is the folder's). Files
in the diffusers/PEFT layout and in kohya's (A1111) layout both load: diffusers' own
`lora_state_dict` converts the latter, exactly as `pipeline.load_lora_weights` does.

Describing an adapter reads only the file's header (tensor names and shapes), so listing a
library of large files is cheap and a broken file is found before a request waits on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' file name in an adapter folder
SUFFIX = ".safetensors"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The cross-attention width an adapter was made for names the family it belongs to.
FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# A down-projection's name in each layout (PEFT: lora_A; kohya: lora_down; old diffusers: down).
_DOWN = re.compile(r"(lora_A|lora_down|lora\.down|_lora\.down)\.weight$")
_DIFFUSERS_BLOCKS = ("down_blocks_", "up_blocks_", "mid_block_")
_KEY_TO_K = re.compile(r"attn2[._](processor[._])?to_k")


class LoraError(ValueError):
    """An adapter that cannot be used: unreadable, not LoRA, or made for another model."""


@dataclass(frozen=True)
class LoraInfo:
    name: str
    path: Path  # the weights file
    size_bytes: int
    rank: int  # the largest rank among its layers
    context_dim: int | None  # the text-embedding width its cross-attention layers take
    text_encoder: bool  # it has text-encoder weights too
    layout: str  # "diffusers" or "kohya"
    # Each adapted UNet layer (its path with `_` for `.`, as kohya names them) and the input
    # width its down-projection takes.
    unet_inputs: dict[str, int] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """sd1, sd2 or sdxl for the common widths; else the width itself (`context-256`)."""
        if self.context_dim is None:
            return "unknown"
        return FAMILIES.get(self.context_dim, f"context-{self.context_dim}")

    def misfit(self, context_dim: int, layers: dict[str, int]) -> str | None:
        """Why it does not adapt a UNet whose text width is `context_dim` and whose layers take
        these input widths (`unet_layer_inputs`); None when it does. Layers named as in the
        original Stable Diffusion checkpoints (kohya's `input_blocks`) are left to the loader,
        which converts them."""
        if self.context_dim is not None and self.context_dim != context_dim:
            return f"is for {self.family} (text width {self.context_dim})"
        if not layers:  # the model's layers are unknown here: the loader decides
            return None
        known = {path: width for path, width in self.unet_inputs.items() if path in layers}
        for layer, width in known.items():
            if layers[layer] != width:
                return f"has layer {layer} taking width {width}; this model's takes {layers[layer]}"
        diffusers_named = any(
            part in path for path in self.unet_inputs for part in _DIFFUSERS_BLOCKS
        )
        if self.unet_inputs and not known and diffusers_named:
            return f"adapts {len(self.unet_inputs)} layers this model does not have"
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "rank": self.rank,
            "context_dim": self.context_dim,
            "text_encoder": self.text_encoder,
            "layout": self.layout,
            "size_bytes": self.size_bytes,
        }


class LoraLibrary:
    """The adapters in one directory (none without one). Read again on each listing, so a file
    copied in later is found without a restart; a file's description is kept while its size and
    modification time stay the same."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._described: dict[Path, tuple[tuple[int, int], LoraInfo | LoraError]] = {}

    def paths(self) -> dict[str, Path]:
        """Every adapter's name and weights file, by name."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        names = {
            entry.name.removesuffix(SUFFIX) if entry.is_file() else entry.name
            for entry in self.directory.iterdir()
        }
        return {name: path for name in sorted(names) if (path := self.path(name)) is not None}

    def listing(self) -> dict[str, LoraInfo | LoraError]:
        """Every adapter by name: described, or the reason it cannot be used."""
        return {name: self._describe(name, path) for name, path in self.paths().items()}

    def path(self, name: str) -> Path | None:
        """An adapter's weights file, looked up directly (a request's adapters need no listing
        of the directory): `<name>.safetensors`, else `<name>/pytorch_lora_weights.safetensors`."""
        if self.directory is None or not NAME.match(name):
            return None
        for candidate in (self.directory / f"{name}{SUFFIX}", self.directory / name / LORA_FILE):
            if candidate.is_file():
                return candidate
        return None

    def get(self, name: str) -> LoraInfo:
        """An adapter by name: KeyError when there is none, LoraError when it is unusable."""
        path = self.path(name)
        if path is None:
            raise KeyError(name)
        described = self._describe(name, path)
        if isinstance(described, LoraError):
            raise described
        return described

    def _describe(self, name: str, path: Path) -> LoraInfo | LoraError:
        try:
            stat = path.stat()
        except OSError as error:
            return LoraError(f"adapter {name!r} cannot be read: {error.strerror}")
        stamp = (stat.st_size, stat.st_mtime_ns)
        kept = self._described.get(path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        try:
            described: LoraInfo | LoraError = inspect(name, path, stat.st_size)
        except LoraError as error:
            described = error
        self._described[path] = (stamp, described)
        return described


def inspect(name: str, path: Path, size_bytes: int) -> LoraInfo:
    """An adapter's rank, family and layout from its header; LoraError when it is not a LoRA
    file this server reads."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise LoraError(f"adapter {name!r} is not a readable safetensors file: {error}") from None
    downs = {key: shape for key, shape in shapes.items() if _DOWN.search(key)}
    if not downs or any(len(shape) < 2 for shape in downs.values()):
        raise LoraError(f"adapter {name!r} holds no LoRA weights (no lora_A / lora_down tensors)")
    if any("dora_scale" in key or "lora_magnitude" in key for key in shapes):
        raise LoraError(f"adapter {name!r} is a DoRA adapter; only LoRA is served")
    context = {shape[1] for key, shape in downs.items() if _KEY_TO_K.search(key)}
    unet_inputs: dict[str, int] = {}
    for key, shape in downs.items():
        layer = _unet_path(key)
        if layer is not None:
            unet_inputs[layer] = shape[1]
    if len(context) > 1:
        raise LoraError(f"adapter {name!r} has cross-attention layers of widths {sorted(context)}")
    kohya = any(key.startswith(("lora_unet_", "lora_te")) for key in shapes)
    return LoraInfo(
        name=name,
        path=path,
        size_bytes=size_bytes,
        rank=max(shape[0] for shape in downs.values()),
        context_dim=context.pop() if context else None,
        text_encoder=any(key.startswith(("text_encoder", "lora_te")) for key in shapes),
        layout="kohya" if kohya else "diffusers",
        unet_inputs=unet_inputs,
    )


def _unet_path(key: str) -> str | None:
    """A UNet down-projection's layer path in kohya's spelling (`_` for `.`); None for other
    tensors (text encoders, old diffusers attention-processor names)."""
    for prefix, suffix in (("unet.", ".lora_A.weight"), ("lora_unet_", ".lora_down.weight")):
        if key.startswith(prefix) and key.endswith(suffix):
            return key[len(prefix) : -len(suffix)].replace(".", "_")
    return None


def unet_layer_inputs(source: str) -> dict[str, int]:
    """Every Linear and Conv2d layer of a diffusers directory's UNet (kohya's spelling) and its
    input width, from its config alone: the UNet is built on the meta device, no weights."""
    config = UNet2DConditionModel.load_config(source, subfolder="unet")
    with torch.device("meta"):
        return layer_inputs(UNet2DConditionModel.from_config(config))


def layer_inputs(model: torch.nn.Module) -> dict[str, int]:
    """Every Linear and Conv2d layer (kohya's spelling) and its input width."""
    widths: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            widths[name.replace(".", "_")] = module.in_features
        elif isinstance(module, torch.nn.Conv2d):
            widths[name.replace(".", "_")] = module.in_channels
    return widths


def describe_all(
    library: LoraLibrary, models: dict[str, tuple[int, dict[str, int]]]
) -> list[dict[str, Any]]:
    """The library as `GET /v1/loras` reports it: each adapter with the served models it fits
    (`models`: name → its text width and layer widths), or why it cannot be used."""
    listed: list[dict[str, Any]] = []
    for name, entry in library.listing().items():
        if isinstance(entry, LoraError):
            listed.append({"name": name, "error": str(entry)})
            continue
        described = entry.describe()
        described["models"] = [
            model for model, (dim, layers) in models.items() if entry.misfit(dim, layers) is None
        ]
        listed.append(described)
    return listed
