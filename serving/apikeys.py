"""Optional API keys: loaded from a file (a Secret in Kubernetes), compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path


def load_api_keys(path: Path) -> tuple[bytes, ...]:
    keys = tuple(line.strip().encode() for line in path.read_text().splitlines() if line.strip())
    if not keys:
        raise ValueError(f"{path} holds no API key")
    return keys


def is_authorized(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key, so timing reveals neither key nor match."""
    scheme, _, token = (header or "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched and bool(presented)
