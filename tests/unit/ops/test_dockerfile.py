"""The Dockerfile's rules, read from its text: tests/container builds and runs the cpu target, but
the cuda target cannot be built here (PyTorch's CUDA wheel index is out of reach), so what keeps
it in step with the cpu one is checked here: the same stages apart from torch's build."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"


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
    """Stage name → its own instructions, FROM first."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else str(len(result))
            current = []
            result[name] = current
        if result:
            current.append((instruction, args))
    return result


def lineage(target: str) -> list[tuple[str, str]]:
    """A target's instructions with those of the stages it is built FROM, base first."""
    all_stages = stages()
    chain: list[tuple[str, str]] = []
    name: str | None = target
    while name in all_stages:
        chain = all_stages[name][1:] + chain
        name = all_stages[name][0][1].split()[0]
    return chain


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    found = {}
    for instruction, args in instructions():
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in args:
            name, default = args.split("=", 1)
            found[name] = default
    return found


def test_every_base_image_is_pinned() -> None:
    names, defaults = set(stages()), global_args()
    for instruction, args in instructions():
        if instruction != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args.split()[0])
        if image in names:
            continue
        assert "@sha256:" in image or re.search(r":[^:/]*\d[^:/]*$", image), (
            f"{image} is not pinned to a versioned tag or digest"
        )
        assert not image.endswith(":latest")


def test_cpu_and_cuda_targets_run_as_a_non_root_user() -> None:
    for target in ("cpu", "cuda"):
        users = [args for instruction, args in lineage(target) if instruction == "USER"]
        assert users, f"{target} sets no USER"
        assert users[-1].split(":")[0] not in {"root", "0"}


def test_nothing_is_installed_or_downloaded_when_the_container_starts() -> None:
    for instruction, args in instructions():
        if instruction in {"CMD", "ENTRYPOINT"}:
            assert not re.search(r"pip|apt-get|curl|wget|huggingface", args), args


def test_runtime_targets_are_multi_stage_and_probe_free() -> None:
    for target in ("cpu", "cuda"):
        chain = lineage(target)
        runs = [args for instruction, args in chain if instruction == "RUN"]
        assert not any("pip" in run for run in runs), f"{target} installs in its runtime stages"
        assert any(i == "COPY" and "--from=" in a for i, a in chain)
        exposed = " ".join(a for i, a in chain if i == "EXPOSE").split()
        assert {"8000", "9000"} <= set(exposed)
    assert all(instruction != "HEALTHCHECK" for instruction, _ in instructions())


def test_the_default_model_ships_with_the_package() -> None:
    """The demo model is package data: every file of it matches pyproject's patterns, so the
    image's `pip install .` carries it (tests/container serves it)."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["serving.models"]
    package = ROOT / "serving" / "models"
    files = [path.relative_to(package).as_posix() for path in (package / "demo").rglob("*")]
    files = [name for name in files if (package / name).is_file()]
    assert "demo/model_index.json" in files
    unmatched = [name for name in files if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert not unmatched, f"left out of the package: {unmatched}"
    assert "COPY serving ./serving" in DOCKERFILE.read_text()


def test_cpu_and_cuda_images_differ_only_in_torchs_build() -> None:
    all_stages = stages()

    def parent(stage: str) -> str:
        return all_stages[stage][0][1].split()[0]

    assert parent("build-cpu") == parent("build-cuda") == "deps"
    assert parent("cpu") == parent("cuda") == "runtime"
    cpu = [args.replace("build-cpu", "build-X") for _, args in all_stages["cpu"][1:]]
    cuda = [
        args.replace("build-cuda", "build-X")
        for instruction, args in all_stages["cuda"][1:]
        if not (instruction == "ENV" and args.startswith("NVIDIA_"))
    ]
    assert cpu == cuda
    # Both torch builds take the lock's version; the cuda one swaps only the local build label.
    for stage in ("build-cpu", "build-cuda"):
        runs = [args for instruction, args in all_stages[stage] if instruction == "RUN"]
        assert any("grep '^torch==' requirements/service.lock" in run for run in runs), stage
    # Every install goes through the one script that honours the CA bundle secret.
    for instruction, args in instructions():
        if instruction == "RUN" and "pip" in args:
            assert "pip-install.sh" in args and "pip install" not in args, args


def test_the_build_context_admits_what_the_dockerfile_uses() -> None:
    admitted = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    used = [
        source
        for instruction, args in instructions()
        if instruction == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    ]
    used += re.findall(r"--mount=type=bind,source=([\w./-]+)", DOCKERFILE.read_text())
    assert used
    for source in used:
        assert any(source == a or source.startswith(f"{a}/") for a in admitted), source
