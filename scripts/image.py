"""Build the sd-serving image with docker or podman, whichever works here (`make image`).

    python scripts/image.py [--target cpu|cuda] [--tag sd-serving:cpu] [--base auto|local|IMAGE]

Where no registry serves the Dockerfile's base image (`--base auto` tries to pull it), a Debian
bookworm root filesystem is built from the package mirror with `mmdebstrap` and imported as
`localhost/sd-serving-base:bookworm`. torch's wheel is linked into wheels/ from pip's find-links
folders when they hold the lock's build, so the build needs no access to PyTorch's index; the
host's CA bundle (`CA_BUNDLE`, default Debian's) goes in as the `ca-bundle` build secret, and
`PIP_INDEX_URL`/`PIP_EXTRA_INDEX_URL` from the environment as build arguments.

Podman runs with runc where it is installed (crun fails on some kernels' cgroup setups) and with
this folder's containers.conf (no default ulimits, which some sandboxes refuse to set), unless
`CONTAINERS_CONF` names another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "python:3.11.11-slim-bookworm"
LOCAL_BASE = "localhost/sd-serving-base:bookworm"
# The local base: Debian's python3 is 3.11 in bookworm, as the lock is resolved for.
LOCAL_BASE_PACKAGES = "python3,python3-venv,ca-certificates,passwd"
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"


def engine() -> list[str]:
    """The container engine command: docker when its daemon answers, else podman."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return [docker]
    podman = shutil.which("podman")
    if podman:
        runc = shutil.which("runc") or (
            "/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None
        )
        return [podman, *(["--runtime", runc] if runc else [])]
    raise SystemExit(
        "no container engine: install podman (Debian: apt-get install podman runc) or start docker"
    )


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def run(cmd: list[str], stdout: int | None = None) -> None:
    """Run a build step, echoed; its failure ends the build."""
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, text=True, env=engine_env(), stdout=stdout)


def image_exists(eng: list[str], image: str) -> bool:
    cmd = [*eng, "image", "inspect", image]
    return subprocess.run(cmd, capture_output=True, env=engine_env()).returncode == 0


def image_mib(eng: list[str], image: str) -> float:
    """The image's size as the engine reports it, in MiB."""
    size = subprocess.run(
        [*eng, "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True,
        text=True,
        check=True,
        env=engine_env(),
    ).stdout.strip()
    return int(size) / 2**20


def local_base(eng: list[str]) -> str:
    """Debian bookworm from the package mirror, imported as a base image (once)."""
    if image_exists(eng, LOCAL_BASE):
        return LOCAL_BASE
    if not shutil.which("mmdebstrap"):
        raise SystemExit("no registry and no mmdebstrap: apt-get install mmdebstrap")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "base.tar"
        run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={LOCAL_BASE_PACKAGES}",
                "bookworm",
                str(tarball),
            ]
        )
        run([*eng, "import", str(tarball), LOCAL_BASE], stdout=subprocess.DEVNULL)
    return LOCAL_BASE


def base_image(eng: list[str], wanted: str) -> str:
    if wanted == "local":
        return local_base(eng)
    image = DEFAULT_BASE if wanted == "auto" else wanted
    if image_exists(eng, image):
        return image
    pulled = subprocess.run([*eng, "pull", image], capture_output=True, env=engine_env())
    if pulled.returncode == 0:
        return image
    if wanted != "auto":
        raise SystemExit(f"cannot pull {image}: {pulled.stderr.decode().strip()}")
    print(f"{image} cannot be pulled here; building a local Debian base", flush=True)
    return local_base(eng)


def locked_torch() -> str:
    """The lock's torch requirement, e.g. `torch==2.13.0+cpu`."""
    for line in (ROOT / "requirements" / "service.lock").read_text().splitlines():
        if line.startswith("torch=="):
            return line.strip()
    raise SystemExit("requirements/service.lock pins no torch")


def link_local_torch() -> bool:
    """Put the lock's torch wheel in wheels/ from pip's find-links folders; whether it is there."""
    version = locked_torch().removeprefix("torch==")
    wheels = ROOT / "wheels"
    if any(wheels.glob(f"torch-{version}-*.whl")):
        return True
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True,
        text=True,
    )
    folders += config.stdout.split()
    for folder in folders:
        for wheel in Path(folder).glob(f"torch-{version}-*.whl"):
            try:
                os.link(wheel, wheels / wheel.name)
            except OSError:
                shutil.copy2(wheel, wheels / wheel.name)
            return True
    return False


def build(target: str, tag: str, base: str) -> None:
    eng = engine()
    started = time.monotonic()
    cmd = [
        *eng,
        "build",
        "--network",
        "host",
        "--target",
        target,
        "--tag",
        tag,
        "--build-arg",
        f"BASE_IMAGE={base_image(eng, base)}",
    ]
    if target == "cpu" and link_local_torch():
        cmd += ["--build-arg", "TORCH_INDEX_URL="]
    ca_bundle = Path(os.environ.get("CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    if ca_bundle.is_file():
        cmd += ["--secret", f"id=ca-bundle,src={ca_bundle}"]
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        if os.environ.get(name):
            cmd += ["--build-arg", name]
    run([*cmd, str(ROOT)])
    print(f"built {tag} in {time.monotonic() - started:.0f} s: {image_mib(eng, tag):.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/image.py", description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tag", default=None, help="default: sd-serving:<target>")
    parser.add_argument("--base", default="auto", help="auto, local, or a base image to use")
    args = parser.parse_args(argv)
    build(args.target, args.tag or f"sd-serving:{args.target}", args.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
