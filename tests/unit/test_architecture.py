"""The layers stay visible: what each folder of serving/ may import.

transports (http/, grpc/) → dataplane/ → StageClient/Store → deployments/ (Ray) → engine/ → models/.
Read from the source's import statements, so a violation names the file and the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (SERVING / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(SERVING.parent)} imports {name}"
        for path in paths
        for name in sorted(imports(path))
        if name.split(".")[0] in forbidden or name in forbidden
    ]


@pytest.mark.parametrize(
    ("folders", "forbidden"),
    [
        (("dataplane",), ("ray", "fastapi", "starlette", "grpc", "uvicorn")),
        (("http", "grpc"), ("ray",)),
        (("engine", "models"), ("ray", "fastapi", "starlette", "grpc", "kserve")),
    ],
)
def test_layers_import_nothing_from_above(
    folders: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    assert not offending(modules(*folders), forbidden)


def test_core_modules_need_no_framework() -> None:
    core = [SERVING / name for name in ("settings.py", "errors.py", "metrics.py", "lru.py")]
    assert not offending(core, ("ray", "fastapi", "starlette", "grpc", "kserve", "torch"))


def test_only_the_deployments_hold_ray_handles() -> None:
    holders = {
        str(path.relative_to(SERVING))
        for path in SERVING.rglob("*.py")
        if any(name.startswith("ray.serve.handle") for name in imports(path))
    }
    assert holders == {"deployments/handles.py", "deployments/ingress.py"}
    ray_users = {
        str(path.relative_to(SERVING))
        for path in SERVING.rglob("*.py")
        if any(name.split(".")[0] == "ray" for name in imports(path))
    }
    assert {p for p in ray_users if not p.startswith("deployments/")} == {"app.py", "cli/serve.py"}


def test_the_client_library_stands_alone() -> None:
    outside = [
        f"{path.name} imports {name}"
        for path in modules("client")
        for name in imports(path)
        if (name.startswith("serving") and not name.startswith("serving.client"))
        or name.split(".")[0] in ("kserve", "ray", "torch", "fastapi")
    ]
    assert not outside
