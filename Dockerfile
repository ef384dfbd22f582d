# syntax=docker/dockerfile:1
#
# Service4CT images (docs/operations.md, "Container images"):
#
#   make images                                   # both targets, docker or podman, whichever runs
#   docker build --target api    -t service4ct-api .      # no torch, no CUDA
#   docker build --target worker -t service4ct-worker .   # torch (locked CUDA build, or TORCH_SPEC)
#
# Both targets start from the same Python base and run as a non-root user (uid 10001) under tini;
# the command is `service4ct <api|worker|migrate|apikey ...>`. Everything is installed from package
# registries (Debian packages, PyPI wheels checked against requirements/{api,worker}.txt hashes):
# nothing is downloaded from anywhere else at build time.
# HEALTHCHECK is part of the Docker image format only: with podman/buildah build `--format docker`
# (make images does); compose and the k8s manifests state the same probes themselves.
#
# Build arguments:
#   PYTHON_IMAGE  base of every stage: Debian 12 with CPython 3.11. Pinned by digest (update it with
#                 `docker buildx imagetools inspect python:3.11-slim-bookworm` or
#                 `skopeo inspect docker://python:3.11-slim-bookworm`, then replace the sha256 below).
#                 Without a registry, deploy/docker/offline/base.sh builds a stand-in from Debian packages.
#   TORCH_LOCK    empty: the locked torch of requirements/worker.txt (the PyPI build for CUDA 13.0 with
#                 its nvidia-* wheels, which carry the CUDA user-space libraries: the host supplies only
#                 the NVIDIA driver >= 580 and the container toolkit). Else a hash-locked file under
#                 requirements/ replacing torch and its CUDA wheels, checked with --require-hashes:
#                 requirements/torch-cpu.txt (the CPU build, from a wheel in WHEELS_DIR or pip's index)
#   TORCH_SPEC    pip arguments replacing torch and its CUDA wheels, installed WITHOUT hash checks (the
#                 operator vouches for them), e.g.
#                 "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   WHEELS_DIR    folder of the build context offered to pip as --find-links in the worker build
#                 (deploy/docker/wheels: drop e.g. the CPU torch wheel there on an offline network)
#   CA_CERTS_DIR  folder of the build context with extra CA certificates (*.crt, PEM) trusted by apt
#                 and pip, for networks whose proxy re-signs HTTPS (deploy/docker/certs)
#   WEIGHTS_DIR   folder of the build context copied to /app/weights (manifest.json and the weight
#                 files it references by relative path: baked weights, verified by sha256 at build).
#                 Entries at s3:// URIs are fetched by the worker at start into S4CT_WEIGHTS_CACHE_DIR.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---------------------------------------------------------------- source tree (shared by both targets)
FROM ${PYTHON_IMAGE} AS src
ARG WEIGHTS_DIR=weights
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY ml ./ml
COPY migrations ./migrations
COPY ${WEIGHTS_DIR} ./weights
COPY deploy/docker/service4ct deploy/docker/healthcheck.py deploy/docker/verify_weights.py ./deploy/docker/
# the api reads the manifest only: its tree carries no weight files
RUN mkdir -p /src-api \
 && cp -a /app/. /src-api/ \
 && find /src-api/weights -type f ! -name '*.json' ! -name '*.md' -delete

# ---------------------------------------------------------------- runtime: base + extra CAs + tini + user
FROM ${PYTHON_IMAGE} AS runtime
ARG CA_CERTS_DIR=deploy/docker/certs
COPY ${CA_CERTS_DIR}/ /usr/local/share/ca-certificates/service4ct/
# hadolint ignore=DL3008
RUN update-ca-certificates >/dev/null \
 && apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 service4ct \
 && useradd --system --uid 10001 --gid service4ct --home-dir /var/lib/service4ct --create-home \
      --shell /usr/sbin/nologin service4ct
# pip (certifi) and Python's ssl otherwise ignore the system store and its extra CAs
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------- api: locked dependencies
FROM runtime AS api-deps
COPY requirements/api.txt /tmp/api.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/api.txt \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------- api
FROM runtime AS api
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
    S4CT_MANIFEST_PATH=/app/weights/manifest.json \
    S4CT_API_CHECKS_WEIGHT_FILES=false
RUN python -m compileall -q /app/app /app/ml
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "api"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["service4ct", "api"]

# ---------------------------------------------------------------- worker: locked dependencies + torch
FROM runtime AS worker-deps
ARG TORCH_LOCK=""
ARG TORCH_SPEC=""
ARG WHEELS_DIR=deploy/docker/wheels
COPY requirements/worker.txt requirements/torch-*.txt /tmp/ctx/requirements/
COPY deploy/docker/lock_without.py /tmp/lock_without.py
COPY ${WHEELS_DIR}/ /tmp/wheels/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# With TORCH_LOCK (a hash-locked file under requirements/, e.g. requirements/torch-cpu.txt) or
# TORCH_SPEC the locked torch and its CUDA wheels are left out; TORCH_LOCK then installs torch with
# --require-hashes, TORCH_SPEC as given (unverified), over the rest of the locked set (its other
# dependencies are already there). TORCH_SPEC holds several pip arguments: split on purpose
# hadolint ignore=SC2086
RUN python -m venv /opt/venv \
 && if [ -n "${TORCH_LOCK}${TORCH_SPEC}" ]; then \
      python /tmp/lock_without.py torch triton 'nvidia-*' 'cuda-*' </tmp/ctx/requirements/worker.txt >/tmp/locked.txt; \
    else cp /tmp/ctx/requirements/worker.txt /tmp/locked.txt; fi \
 && /opt/venv/bin/pip install --no-deps --require-hashes --find-links /tmp/wheels -r /tmp/locked.txt \
 && if [ -n "${TORCH_LOCK}" ]; then \
      /opt/venv/bin/pip install --no-deps --require-hashes --find-links /tmp/wheels -r "/tmp/ctx/${TORCH_LOCK}"; \
    elif [ -n "${TORCH_SPEC}" ]; then \
      echo "TORCH_SPEC is installed without hash checks: ${TORCH_SPEC}" >&2; \
      /opt/venv/bin/pip install --find-links /tmp/wheels ${TORCH_SPEC}; \
    fi \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -c "import torch, captum; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------- worker
FROM runtime AS worker
RUN mkdir -p /var/cache/service4ct/weights \
 && chown -R 10001:10001 /var/cache/service4ct
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
