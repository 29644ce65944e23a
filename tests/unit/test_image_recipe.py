"""What can be checked without building: the lock files pin every dependency pyproject.toml asks
for (torch as its CPU build), and the Dockerfile's cpu and cuda targets are the same stages apart
from torch's build, so the cuda image, which cannot be built here, stays in step with the cpu one
that tests/container builds and runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
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


def stages() -> dict[str, list[str]]:
    """Dockerfile stage name → its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if match := re.match(r"FROM (\S+) AS (\S+)", line):
            current = found.setdefault(match.group(2), [f"FROM {match.group(1)}"])
        elif line.strip() and not line.startswith("#"):
            current.append(line.strip())
    return found


def test_cpu_and_cuda_images_differ_only_in_torchs_build() -> None:
    recipe = stages()
    assert recipe["build-cpu"][0] == recipe["build-cuda"][0] == "FROM deps"
    assert recipe["cpu"][0] == recipe["cuda"][0] == "FROM runtime"
    assert [line.replace("build-cpu", "build-X") for line in recipe["cpu"][1:]] == [
        line.replace("build-cuda", "build-X") for line in recipe["cuda"][1:] if "NVIDIA" not in line
    ]
    # Both torch builds take the lock's version: the cuda one swaps only the local build label.
    for stage in ("build-cpu", "build-cuda"):
        assert any("grep '^torch==' requirements/service.lock" in line for line in recipe[stage])
    assert all(
        "pip install" not in line or "pip-install.sh" in line for s in recipe.values() for line in s
    )


def test_the_build_context_admits_what_the_dockerfile_copies() -> None:
    admitted = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copied = [
        source
        for lines in stages().values()
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    copied += ["wheels"]  # bind-mounted by the RUN steps that install
    for source in copied:
        assert any(source == a or source.startswith(f"{a}/") for a in admitted), source
