"""What the clients return: generated images, and the one error type for every protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ClientError(Exception):
    """`status` is the HTTP status, or for gRPC the status code's name (e.g. INVALID_ARGUMENT)."""

    def __init__(self, status: int | str, code: str, message: str, field: str | None) -> None:
        prefix = f"HTTP {status}" if isinstance(status, int) else f"gRPC {status}"
        super().__init__(f"{prefix} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Image:
    data: bytes
    seed: int
    media_type: str
    url: str

    @property
    def digest(self) -> str:
        """The server's name for the image (content-addressed): what feedback on it names."""
        return hashlib.sha256(self.data).hexdigest()[:40]

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class Generation:
    images: list[Image]
    cached: bool
    timings_ms: dict[str, float]
    warnings: list[str]
    parameters: dict[str, Any]
    model_version: str | None = None  # the model version that made the images (None: unversioned)


# A request's adapters as callers write them: [("style-a", 0.8)], [{"name": …, "scale": …}] or
# {"style-a": 0.8}.
LoraChoice = tuple[str, float] | dict[str, Any]


def lora_field(loras: list[LoraChoice] | dict[str, float]) -> list[dict[str, Any]]:
    """The `loras` field as the API takes it: [{"name": …, "scale": …}]."""
    if isinstance(loras, dict):
        return [{"name": name, "scale": float(scale)} for name, scale in loras.items()]
    field: list[dict[str, Any]] = []
    for choice in loras:
        if isinstance(choice, dict):
            field.append(dict(choice))
        else:
            name, scale = choice
            field.append({"name": name, "scale": float(scale)})
    return field
