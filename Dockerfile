# syntax=docker/dockerfile:1
#
# The inference-sidecar server image (docs/operations.md, "Container image").
#
#   docker build -t inference-sidecar:0.1.0 .
#   docker run --rm -p 8001:8001 -p 8002:8002 inference-sidecar:0.1.0
#
# The second line serves the bundled example models (the ONNX ones, unless the
# image has the torch extra). The Helm chart's default
# image is inference-sidecar:<appVersion>; the chart runs it as user 10001 with
# a read-only root filesystem and an emptyDir at /tmp. Nothing in the image is
# written at run time: configuration, models and any label store file come
# from mounted volumes.
#
# Build arguments:
#   EXTRAS   pip extras installed with the server (default onnx,redis: ONNX
#            Runtime on CPU and the shared Redis label store). Add torch for
#            TorchScript / torch.export models (CPU wheels from PyTorch's index:
#            --build-arg EXTRAS=onnx,redis,torch
#            --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu),
#            gpu for NVML metrics.
#   PYTHON_IMAGE  the base of both stages; pin it by digest in production.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The versions CI tests with (constraints.txt) pin every dependency.
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar/ sidecar/
COPY exporters/ exporters/
COPY detectors/ detectors/

ARG EXTRAS=onnx,redis
ARG PIP_EXTRA_INDEX_URL
# A regular (not editable) install: the venv holds everything, /src is left behind.
# pip compiles the bytecode here, so the read-only image never needs to.
RUN pip install --constraint constraints.txt ".[${EXTRAS}]"
# Without the torch extra the bundled examples' TorchScript / torch.export models
# cannot load, and with strict readiness the server would never turn ready on
# the bundled repository (the chart's default model source): an image without
# torch leaves them out. Then every bundled model must load in this image.
RUN python -c "import importlib.util, shutil, sidecar.examples as ex; \
torch = importlib.util.find_spec('torch') is not None; \
[shutil.rmtree(d) for d in sorted(ex.MODEL_REPOSITORY.iterdir()) \
 if not torch and d.is_dir() and any(d.glob('*/model.pt*'))]" \
    && inference-sidecar validate

# ---------------------------------------------------------------- run stage
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="inference-sidecar" \
      org.opencontainers.image.description="KServe v2 gRPC model server that monitors its models for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"

# The user the chart's securityContext runs as (runAsUser/runAsGroup/fsGroup).
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar

COPY --from=build /opt/venv /opt/venv

# No bytecode or caches written at run time; anything a library caches goes to
# /tmp, the only writable place (the chart mounts an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /tmp

# gRPC (KServe v2, FeedbackService, health) and Prometheus /metrics: the
# defaults of config.grpc.port and config.metrics.port.
EXPOSE 8001 8002

ENTRYPOINT ["inference-sidecar", "serve"]
