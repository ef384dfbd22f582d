#!/usr/bin/env bash
# Builds the api and worker images (`make images`) with docker or podman, whichever answers, tags
# each also with the project's version (service4ct-api:0.1.0: the names deploy/k8s uses), and
# prints one line per image: "built <target> <image> <image id>".
#
# Environment (all optional):
#   S4CT_ENGINE        docker | podman (default: deploy/docker/engine.sh picks)
#   API_IMAGE          tag of the api image     (default service4ct-api:local)
#   WORKER_IMAGE       tag of the worker image  (default service4ct-worker:local)
#   PYTHON_IMAGE       base image (default: the Dockerfile's digest-pinned python:3.11-slim-bookworm);
#                      must be pinned: NAME[:TAG]@sha256:DIGEST, a local image's full ID (64 hex), or
#                      a local image (no registry, e.g. deploy/docker/offline/base.sh's) together
#                      with PYTHON_IMAGE_ID
#   PYTHON_IMAGE_ID    the image ID a local PYTHON_IMAGE must have (what base.sh printed); checked
#   S4CT_ALLOW_UNPINNED=1  build from an unpinned base anyway (a warning)
#   S4CT_DRY_RUN=1     check the pins, print the engine commands instead of running them
#   WORKER_TORCH_LOCK  the worker's TORCH_LOCK build argument, a hash-locked file under requirements/
#                      (e.g. requirements/torch-cpu.txt; default: the locked CUDA torch)
#   WORKER_TORCH_SPEC  the worker's TORCH_SPEC build argument (pip arguments, installed unverified)
#   BUILD_CONTEXT      build context (default: the repository root)
#   TARGETS            which targets (default "api worker")
# Extra CA certificates go in deploy/docker/certs/, extra wheels in deploy/docker/wheels/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ENGINE=${S4CT_ENGINE:-$("$root/deploy/docker/engine.sh")} || {
  echo "error: no container engine: neither docker nor podman answers (install one, or start dockerd)" >&2
  exit 3
}
context=${BUILD_CONTEXT:-$root}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/pyproject.toml" | head -n 1)
run() { if [ "${S4CT_DRY_RUN:-}" = 1 ]; then echo "+ $*"; else "$@"; fi; }

# The base image must be pinned (docs/security.md): by digest, or a local image by its ID.
pinned() {  # $1: image reference; exit 0 when pinned, else prints why and exits 1
  local ref=$1
  if [[ $ref =~ @sha256:[0-9a-f]{64}$ || $ref =~ ^[0-9a-f]{64}$ ]]; then return 0; fi  # digest, image ID
  if [ -n "${PYTHON_IMAGE_ID:-}" ]; then
    local id
    id=$("$ENGINE" image inspect --format '{{.Id}}' "$ref" 2>/dev/null) || {
      echo "error: local base image $ref not found (build it with deploy/docker/offline/base.sh)" >&2; return 1; }
    if [ "${id#sha256:}" = "${PYTHON_IMAGE_ID#sha256:}" ]; then return 0; fi
    echo "error: base image $ref has ID $id, not PYTHON_IMAGE_ID=$PYTHON_IMAGE_ID" >&2
    return 1
  fi
  echo "error: base image $ref is not pinned: use NAME@sha256:DIGEST, or a local image with" \
    "PYTHON_IMAGE_ID=<its image ID>; S4CT_ALLOW_UNPINNED=1 builds anyway" >&2
  return 1
}
base=${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$context/Dockerfile" | head -n 1)}
if ! pinned "$base"; then
  [ "${S4CT_ALLOW_UNPINNED:-}" = 1 ] || exit 4
  echo "warning: building from the unpinned base image $base (S4CT_ALLOW_UNPINNED=1)" >&2
fi
args=()
[ -z "${PYTHON_IMAGE:-}" ] || args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
# podman/buildah write OCI images by default, which have no HEALTHCHECK
[ "$(basename "$ENGINE")" != podman ] || args+=(--format docker)
for target in ${TARGETS:-api worker}; do
  case $target in
    api) image=${API_IMAGE:-service4ct-api:local}; extra=() ;;
    worker) image=${WORKER_IMAGE:-service4ct-worker:local}
            extra=(--build-arg "TORCH_LOCK=${WORKER_TORCH_LOCK:-}" --build-arg "TORCH_SPEC=${WORKER_TORCH_SPEC:-}") ;;
    *) echo "error: unknown target $target" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  run "$ENGINE" build "${args[@]}" "${extra[@]}" --target "$target" -t "$image" -f "$context/Dockerfile" "$context"
  run "$ENGINE" tag "$image" "${image%:*}:$version"
  [ "${S4CT_DRY_RUN:-}" != 1 ] || continue
  id=$("$ENGINE" image inspect --format '{{.Id}}' "$image")
  echo "built $target $image $id ($(( $(date +%s) - start )) s)"
done
