"""Render the chart for its documented profiles; `--write` refreshes k8s/ (the plain manifests).

The chart is the one source of truth: k8s/<profile>/ is its rendered output, and the chart tests
fail when the two drift apart. Run `make render-k8s` after changing the chart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sd-serving"
K8S = ROOT / "k8s"
RELEASE = "sd-serving"
NAMESPACE = "sd-serving"
# Profile name -> values file ("" = the chart's defaults).
PROFILES: dict[str, str] = {"default": ""} | {
    path.name.removesuffix("-values.yaml"): str(path)
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}


def helm() -> str:
    binary = os.environ.get("HELM_BIN") or str(ROOT / ".tools" / "bin" / "helm")
    if not Path(binary).exists():
        raise RuntimeError(f"helm not found at {binary}: run `make tools` (make test does it)")
    return binary


def helm_args(profile: str, *extra: str) -> list[str]:
    values = PROFILES[profile]
    return [*(["-f", values] if values else []), *extra]


def render_text(profile: str, *extra: str) -> str:
    command = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    result = subprocess.run(
        command + helm_args(profile, *extra), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed for {profile}:\n{result.stderr}")
    return result.stdout


def render(profile: str, *extra: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(profile, *extra)) if doc]


def plain_manifests(profile: str) -> str:
    """What k8s/<profile>/manifests.yaml holds: the render without the helm test hook."""
    header = (
        f"# Rendered from charts/sd-serving with profile {profile!r} by `make render-k8s`.\n"
        "# Do not edit: change the chart and re-render (a test fails on drift).\n"
    )
    return header + render_text(profile, "--skip-tests")


def kustomization() -> str:
    return "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" + (
        f"namespace: {NAMESPACE}\nresources:\n  - manifests.yaml\n"
    )


def write() -> None:
    for profile in PROFILES:
        folder = K8S / profile
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifests.yaml").write_text(plain_manifests(profile))
        (folder / "kustomization.yaml").write_text(kustomization())
        print(f"wrote {folder.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python scripts/render_k8s.py --write")
    write()
