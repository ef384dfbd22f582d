#!/usr/bin/env bash
# Builds the api and worker images (`make images`) with docker or podman, whichever answers, tags
# each also with the project's version (service4ct-api:0.1.0: the names deploy/k8s uses), and
# prints one line per image: "built <target> <image> <image id>".
#
# Environment (all optional):
#   S4CT_ENGINE        docker | podman (default: deploy/docker/engine.sh picks)
#   API_IMAGE          tag of the api image     (default service4ct-api:local)
#   WORKER_IMAGE       tag of the worker image  (default service4ct-worker:local)
#   PYTHON_IMAGE       base image (default: the Dockerfile's digest-pinned python:3.11-slim-bookworm)
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
  "$ENGINE" build "${args[@]}" "${extra[@]}" --target "$target" -t "$image" -f "$context/Dockerfile" "$context"
  "$ENGINE" tag "$image" "${image%:*}:$version"
  id=$("$ENGINE" image inspect --format '{{.Id}}' "$image")
  echo "built $target $image $id ($(( $(date +%s) - start )) s)"
done
