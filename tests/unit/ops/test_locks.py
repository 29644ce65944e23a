"""The lock files pin every dependency pyproject.toml asks for, torch as its CPU build: two
builds a month apart (the image, `make install`) install the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
SERVICE_LOCK, DEV_LOCK = ROOT / "requirements" / "service.lock", ROOT / "requirements" / "dev.lock"


def pins(lock: Path) -> dict[str, Version]:
    found = {}
    for line in lock.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            name, version = line.split("==")
            found[canonicalize_name(name)] = Version(version.strip())
    return found


def requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + (
        [r for group in project["optional-dependencies"].values() for r in group] if extra else []
    )
    return [r for r in map(Requirement, listed) if canonicalize_name(r.name) != "sd-serving"]


def test_the_locks_pin_every_dependency_within_its_range() -> None:
    """Adding or changing a dependency in pyproject.toml without `make lock` fails here."""
    for lock, extra in ((SERVICE_LOCK, None), (DEV_LOCK, "dev")):
        pinned = pins(lock)
        for requirement in requirements(extra):
            version = pinned.get(canonicalize_name(requirement.name))
            assert version is not None, f"{lock.name} pins no {requirement.name}: run make lock"
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock.name} pins {requirement.name} {version}, outside {requirement}"
            )


def test_the_dev_lock_installs_the_images_versions() -> None:
    service, dev = pins(SERVICE_LOCK), pins(DEV_LOCK)
    assert {name: dev.get(name) for name in service} == service


def test_torch_is_pinned_to_its_cpu_build() -> None:
    """PyPI's plain torch is a CUDA build of several GB; the Dockerfile swaps `+cpu` for the cuda
    target's build."""
    for lock in (SERVICE_LOCK, DEV_LOCK):
        assert pins(lock)["torch"].local == "cpu"
    assert "torch==" in (ROOT / "requirements" / "torch-cpu.txt").read_text()
