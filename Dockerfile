# syntax=docker/dockerfile:1
#
# Service4CT images (docs/operations.md):
#
#   docker build --target api    -t service4ct-api .      # python:3.11-slim, no torch, no CUDA
#   docker build --target worker -t service4ct-worker .   # CUDA base + torch (CUDA wheel)
#
# Both run as a non-root user under tini; the command is `service4ct <api|worker|migrate|apikey ...>`.
# Dependencies come from the hash-locked requirements/{api,worker,build}.txt (deploy/lock-requirements.sh).
#
# Build arguments:
#   PYTHON_IMAGE  base of the api target and of the build stages
#   CUDA_IMAGE    base of the worker target. torch's wheels carry their own CUDA user-space
#                 libraries (cuBLAS, cuDNN, NCCL ...); the host only supplies the driver, so the
#                 small `base` flavour is enough. The locked torch is built for CUDA 13.0
#                 (driver >= 580); use a matching CUDA_IMAGE when TORCH_SPEC picks another build.
#   TORCH_SPEC    empty: the locked torch. Else pip arguments installing another build over it, e.g.
#                 "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   PYTHON_VERSION  CPython installed by uv in the worker image (the CUDA image has no 3.11)
#   WEIGHTS_DIR   folder of the build context copied to /app/weights (manifest.json and the weight
#                 files it references by relative path: baked weights, verified by sha256 at build).
#                 Entries at s3:// URIs are fetched by the worker at start into S4CT_WEIGHTS_CACHE_DIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------- source tree (shared by both targets)
FROM ${PYTHON_IMAGE} AS src
ARG WEIGHTS_DIR=weights
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY ml ./ml
COPY migrations ./migrations
COPY ${WEIGHTS_DIR} ./weights
COPY deploy/docker ./deploy/docker
# the api reads the manifest only: its tree carries no weight files
RUN mkdir -p /src-api \
 && cp -a /app/. /src-api/ \
 && find /src-api/weights -type f ! -name '*.json' ! -name '*.md' -delete

# ---------------------------------------------------------------- api: locked dependencies
FROM ${PYTHON_IMAGE} AS api-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/api.txt /tmp/api.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/api.txt \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------- api
FROM ${PYTHON_IMAGE} AS api
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 service4ct \
 && useradd --system --uid 10001 --gid service4ct --home-dir /var/lib/service4ct --create-home \
      --shell /usr/sbin/nologin service4ct
COPY --from=api-deps /opt/venv /opt/venv
COPY --from=src /src-api /app
COPY --chmod=0755 deploy/docker/service4ct /usr/local/bin/service4ct
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S4CT_HOST=0.0.0.0 \
    S4CT_PORT=8000 \
    S4CT_LOG_JSON=true \
    S4CT_VAR_DIR=/var/lib/service4ct \
    S4CT_MANIFEST_PATH=/app/weights/manifest.json
RUN python -m compileall -q /app/app /app/ml
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "api"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["service4ct", "api"]

# ---------------------------------------------------------------- uv (from its locked PyPI wheel)
FROM ${PYTHON_IMAGE} AS uv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/build.txt /tmp/build.txt
RUN pip install --no-deps --require-hashes --target /opt/uv -r /tmp/build.txt

# ---------------------------------------------------------------- worker: Python 3.11 + locked dependencies
FROM ${CUDA_IMAGE} AS worker-deps
ARG PYTHON_VERSION=3.11
ARG TORCH_SPEC=""
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy
COPY --from=uv /opt/uv/bin/uv /usr/local/bin/uv
COPY requirements/worker.txt /tmp/worker.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# TORCH_SPEC holds several pip arguments: split on purpose
# hadolint ignore=SC2086
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv \
 && uv pip install --python /opt/venv/bin/python --require-hashes --no-deps -r /tmp/worker.txt \
 && if [ -n "${TORCH_SPEC}" ]; then \
      uv pip install --python /opt/venv/bin/python --reinstall-package torch ${TORCH_SPEC}; \
    fi \
 && /opt/venv/bin/python -c "import torch, captum; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------- worker
FROM ${CUDA_IMAGE} AS worker
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 service4ct \
 && useradd --system --uid 10001 --gid service4ct --home-dir /var/lib/service4ct --create-home \
      --shell /usr/sbin/nologin service4ct \
 && mkdir -p /var/cache/service4ct/weights \
 && chown -R 10001:10001 /var/cache/service4ct
COPY --from=worker-deps /opt/python /opt/python
COPY --from=worker-deps /opt/venv /opt/venv
COPY --from=src /app /app
COPY --chmod=0755 deploy/docker/service4ct /usr/local/bin/service4ct
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    S4CT_HOST=0.0.0.0 \
    S4CT_WORKER_METRICS_PORT=9100 \
    S4CT_LOG_JSON=true \
    S4CT_DEVICE=auto \
    S4CT_VAR_DIR=/var/lib/service4ct \
    S4CT_WORK_DIR=/var/lib/service4ct/work \
    S4CT_WEIGHTS_CACHE_DIR=/var/cache/service4ct/weights \
    S4CT_MANIFEST_PATH=/app/weights/manifest.json
RUN python -m compileall -q /app/app /app/ml \
 && python /app/deploy/docker/verify_weights.py /app/weights/manifest.json
WORKDIR /app
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "worker"]
# SIGTERM reaches `service4ct worker` (tini forwards it): the worker stops taking work, lets held jobs
# finish for up to 30 s and gives the rest back (attempt released); allow 90 s before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["service4ct", "worker"]
