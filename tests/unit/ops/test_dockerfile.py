"""The Dockerfile cannot be built here (no container engine): parse it for the rules that matter."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[3] / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else str(len(result))
            current = []
            result[name] = current
        current.append((instruction, args))
    return result


def test_every_base_image_is_pinned() -> None:
    names = set(stages())
    for instruction, args in instructions():
        if instruction != "FROM":
            continue
        image = args.split()[0]
        if image in names:
            continue
        assert "@sha256:" in image or re.search(r":[^:/]*\d[^:/]*$", image), (
            f"{image} is not pinned to a versioned tag or digest"
        )
        assert not image.endswith(":latest")


def test_cpu_and_cuda_targets_run_as_a_non_root_user() -> None:
    all_stages = stages()
    for target in ("cpu", "cuda"):
        users = [args for instruction, args in all_stages[target] if instruction == "USER"]
        assert users, f"{target} sets no USER"
        user = users[-1].split(":")[0]
        assert user not in {"root", "0"}


def test_nothing_is_installed_or_downloaded_when_the_container_starts() -> None:
    for instruction, args in instructions():
        if instruction in {"CMD", "ENTRYPOINT"}:
            assert not re.search(r"pip|apt-get|curl|wget|huggingface", args), args


def test_runtime_targets_are_multi_stage_and_probe_free() -> None:
    all_stages = stages()
    for target in ("cpu", "cuda"):
        runs = [args for instruction, args in all_stages[target] if instruction == "RUN"]
        assert not any("pip install" in run for run in runs), f"{target} installs at runtime stage"
        assert any(i == "COPY" and "--from=" in a for i, a in all_stages[target])
        exposed = " ".join(a for i, a in all_stages[target] if i == "EXPOSE").split()
        assert {"8000", "9000"} <= set(exposed)
    assert all(instruction != "HEALTHCHECK" for instruction, _ in instructions())


def test_the_embedded_model_is_baked_in() -> None:
    text = DOCKERFILE.read_text()
    assert "ensure_cached" in text and "SD_CACHE_DIR=/opt/sd-serving/cache" in text
