# sd-serving images. Targets:
#   cuda: GPU nodes (CUDA 12.8 runtime; torch's CUDA wheel)   docker build --target cuda -t sd-serving:gpu .
#   cpu:  CPU nodes and smoke tests                             docker build --target cpu  -t sd-serving:cpu .
# Everything is installed at build time: nothing is downloaded when a pod starts. No HEALTHCHECK:
# Kubernetes probes /v2/health/{live,ready}.

# ---- build: a virtual environment with the package and its pinned dependencies
FROM python:3.11.11-slim-bookworm AS source
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    SD_CACHE_DIR=/opt/sd-serving/cache
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving ./serving

# The variants differ only in torch's build. Each then bakes the embedded model, so smoke tests and
# the default profile start offline.
FROM source AS build-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install . \
    && python -c "from serving.models.embedded import ensure_cached; from pathlib import Path; ensure_cached(Path('$SD_CACHE_DIR'))"

FROM source AS build-cuda
RUN pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0 \
    && pip install . \
    && python -c "from serving.models.embedded import ensure_cached; from pathlib import Path; ensure_cached(Path('$SD_CACHE_DIR'))"

# ---- runtime images: the venv and the model cache, a non-root user, nothing else
FROM python:3.11.11-slim-bookworm AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
COPY --from=build-cpu /opt/sd-serving /opt/sd-serving
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp sdserving
ENV PATH=/opt/venv/bin:$PATH \
    SD_CACHE_DIR=/opt/sd-serving/cache \
    SD_HTTP_HOST=0.0.0.0 \
    SD_RAY_TEMP_DIR=/tmp/ray \
    RAY_AUTH_MODE=disabled \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
EXPOSE 8000 9000 8080
ENTRYPOINT ["sd-serving"]
CMD ["serve"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS cuda
# The same CPython as the build stage (its /usr/local), so the copied venv runs unchanged.
COPY --from=build-cuda /usr/local /usr/local
COPY --from=build-cuda /opt/venv /opt/venv
COPY --from=build-cuda /opt/sd-serving /opt/sd-serving
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp sdserving
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/lib \
    SD_CACHE_DIR=/opt/sd-serving/cache \
    SD_HTTP_HOST=0.0.0.0 \
    SD_RAY_TEMP_DIR=/tmp/ray \
    RAY_AUTH_MODE=disabled \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
EXPOSE 8000 9000 8080
ENTRYPOINT ["sd-serving"]
CMD ["serve"]
