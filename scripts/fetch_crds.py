"""Download the pinned upstream CRDs the chart's custom resources are validated against.

Needs network access to GitHub; on machines without it, point CRD_DIR at a folder holding
these files (this project's CI uses the copy in ../shared/crds).
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

RAW = "https://raw.githubusercontent.com"
CRDS = {
    "serving.kserve.io_inferenceservices.yaml": "kserve/kserve/v0.20.0/config/crd/full",
    "serving.kserve.io_servingruntimes.yaml": "kserve/kserve/v0.20.0/config/crd/full",
    "ray.io_rayservices.yaml": "ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases",
    "ray.io_rayclusters.yaml": "ray-project/kuberay/v1.7.0/ray-operator/config/crd/bases",
    "karpenter.sh_nodepools.yaml": "kubernetes-sigs/karpenter/v1.14.1/pkg/apis/crds",
    "karpenter.k8s.aws_ec2nodeclasses.yaml": "aws/karpenter-provider-aws/v1.14.1/pkg/apis/crds",
    "keda.sh_scaledobjects.yaml": "kedacore/keda/v2.20.2/config/crd/bases",
    "monitoring.coreos.com_servicemonitors.yaml": (
        "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd"
    ),
    "monitoring.coreos.com_podmonitors.yaml": (
        "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd"
    ),
    "monitoring.coreos.com_prometheusrules.yaml": (
        "prometheus-operator/prometheus-operator/v0.93.0/example/prometheus-operator-crd"
    ),
}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, location in CRDS.items():
        url = f"{RAW}/{location}/{name}"
        with urllib.request.urlopen(url, timeout=60) as answer:
            (folder / name).write_bytes(answer.read())
        print(f"{name} <- {url}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
