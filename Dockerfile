# syntax=docker/dockerfile:1.7
# sd-serving images: `make image` builds them (docker or podman; see scripts/image.py).
#   cpu:  CPU nodes and smoke tests     docker build --target cpu  -t sd-serving:cpu .
#   cuda: GPU nodes                     docker build --target cuda -t sd-serving:gpu .
# Both targets are the same stages from the same base and the same lock file
# (requirements/service.lock); they differ only in torch's build (build-cpu, build-cuda).
# torch's CUDA wheels carry their CUDA runtime (the nvidia-* packages), so the GPU image needs
# only the node's driver, which the NVIDIA container toolkit mounts.
#
# Build arguments, for private indexes and proxies (defaults: the public ones):
#   BASE_IMAGE           any Debian/Ubuntu image with python3 (3.11) and python3-venv
#   PIP_INDEX_URL        the package index (pip's default when unset)
#   PIP_EXTRA_INDEX_URL  more indexes, space separated
#   TORCH_INDEX_URL      where torch's CPU/CUDA build comes from ("" when wheels/ holds it)
#   CUDA_BUILD           torch's CUDA build for the cuda target (cu128)
# Wheels placed in wheels/ are found too (pip find-links). A CA bundle for a proxy or a private
# index is a build secret: --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt.
#
# Everything is installed at build time: nothing is downloaded when a pod starts. No HEALTHCHECK:
# Kubernetes probes /v2/health/{live,ready}.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

# ---- what every stage shares: the base, the venv on PATH, the model cache's place
FROM ${BASE_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    SD_CACHE_DIR=/opt/sd-serving/cache

# ---- deps: every locked dependency but torch, and the package itself
FROM base AS deps
# pip reads the index settings from the environment; empty, they are its defaults.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/service.lock requirements/pip-install.sh requirements/
RUN --mount=type=bind,source=wheels,target=/wheels --mount=type=secret,id=ca-bundle \
    grep -v '^torch==' requirements/service.lock > /tmp/deps.txt \
    && requirements/pip-install.sh --no-deps --requirement /tmp/deps.txt
COPY pyproject.toml README.md ./
COPY serving ./serving
RUN requirements/pip-install.sh --no-deps --no-build-isolation --no-index .

# ---- torch, the lock's version in each build (the default model, the trained demo model, is
# package data: it came with the package)
FROM deps AS build-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,source=wheels,target=/wheels --mount=type=secret,id=ca-bundle \
    requirements/pip-install.sh --no-deps "$(grep '^torch==' requirements/service.lock)" \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    && mkdir -p /opt/sd-serving/cache && chmod -R a+rX /opt/sd-serving

# The CUDA build brings its CUDA runtime (nvidia-*, pinned by torch itself) as dependencies.
FROM deps AS build-cuda
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG CUDA_BUILD=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${CUDA_BUILD}
RUN --mount=type=bind,source=wheels,target=/wheels --mount=type=secret,id=ca-bundle \
    requirements/pip-install.sh "$(grep '^torch==' requirements/service.lock | sed "s/+cpu$/+$CUDA_BUILD/")" \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    && mkdir -p /opt/sd-serving/cache && chmod -R a+rX /opt/sd-serving

# ---- runtime: the venv and the model cache, a non-root user, nothing else
FROM base AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp sdserving
# Ray writes its session under /tmp, and the compiled denoiser its inductor cache: the chart
# mounts an emptyDir there, so the root filesystem stays read-only and a restarted container
# (same pod) loads its compiled graphs instead of compiling again.
ENV SD_HTTP_HOST=0.0.0.0 \
    SD_RAY_TEMP_DIR=/tmp/ray \
    SD_COMPILE_CACHE_DIR=/tmp/torch-compile \
    RAY_AUTH_MODE=disabled \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serving.http.proxy:middlewares \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000 9000 8080
ENTRYPOINT ["sd-serving"]
CMD ["serve"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
COPY --from=build-cpu /opt/sd-serving /opt/sd-serving

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
COPY --from=build-cuda /opt/sd-serving /opt/sd-serving
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
