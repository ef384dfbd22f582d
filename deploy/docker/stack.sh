#!/usr/bin/env bash
# Starts or stops the compose stack in stages, with Docker Compose v2 or podman-compose:
#   1. postgres, redis, minio; wait until each is healthy
#   2. the one-shots minio-init and migrate; wait until each has exited 0
#   3. api and the workers of the chosen profiles; wait until each is healthy
# (podman-compose ignores `condition: service_healthy`, and podman runs health checks only on
# request: this script asks.) With Docker, `docker compose up -d --wait` does the same.
#
#   deploy/docker/stack.sh up        start (images must exist: `make images`)
#   deploy/docker/stack.sh down      stop and remove containers and the network (volumes stay)
#   deploy/docker/stack.sh purge     the same and remove the volumes too
#
# Environment: COMPOSE_FILE (colon-separated files, default docker-compose.yml),
# COMPOSE_PROJECT_NAME (default service4ct), COMPOSE_PROFILES (comma-separated, e.g. cpu),
# COMPOSE_ENV_FILE (default .env when present), STACK_TIMEOUT (s per stage, default 300),
# S4CT_ENGINE (docker | podman).
set -euo pipefail
cd "$(dirname "$0")/../.."
engine=${S4CT_ENGINE:-$(deploy/docker/engine.sh)} || {
  echo "error: no container engine: neither docker nor podman answers" >&2
  exit 3
}
case $(basename "$engine") in
  docker) compose=("$engine" compose) ;;
  podman) compose=(podman-compose) ;;
  *) echo "error: unknown engine $engine" >&2; exit 3 ;;
esac
project=${COMPOSE_PROJECT_NAME:-service4ct}
timeout=${STACK_TIMEOUT:-300}
args=(-p "$project")
env_file=${COMPOSE_ENV_FILE:-}
[ -n "$env_file" ] || [ ! -f .env ] || env_file=.env
[ -z "$env_file" ] || args+=(--env-file "$env_file")
IFS=: read -ra files <<<"${COMPOSE_FILE:-docker-compose.yml}"
for f in "${files[@]}"; do args+=(-f "$f"); done
IFS=, read -ra profiles <<<"${COMPOSE_PROFILES:-}"
for p in "${profiles[@]}"; do [ -z "$p" ] || args+=(--profile "$p"); done
c() { "${compose[@]}" "${args[@]}" "$@"; }
stores=(postgres redis minio)
one_shots=(minio-init migrate)

container_of() {
  "$engine" ps -a --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n 1
}

healthy() {  # the health check of container $1 passes now
  if [ "$(basename "$engine")" = podman ]; then
    "$engine" healthcheck run "$1" >/dev/null 2>&1
  else
    [ "$("$engine" inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]
  fi
}

wait_healthy() {
  local svc name deadline=$((SECONDS + timeout))
  for svc in "$@"; do
    name=$(container_of "$svc")
    [ -n "$name" ] || { echo "error: no container for $svc" >&2; exit 1; }
    until healthy "$name"; do
      if [ "$("$engine" inspect --format '{{.State.Running}}' "$name")" != true ] || ((SECONDS > deadline)); then
        echo "error: $svc ($name) did not become healthy; its log:" >&2
        "$engine" logs --tail 50 "$name" >&2 || true
        exit 1
      fi
      sleep 1
    done
    echo "healthy: $svc ($name)"
  done
}

wait_exited_ok() {
  local svc name rc
  for svc in "$@"; do
    name=$(container_of "$svc")
    [ -n "$name" ] || { echo "error: no container for $svc" >&2; exit 1; }
    rc=$(timeout "$timeout" "$engine" wait "$name" | tail -n 1)
    if [ "$rc" != 0 ]; then
      echo "error: $svc ($name) exited $rc; its log:" >&2
      "$engine" logs --tail 50 "$name" >&2 || true
      exit 1
    fi
    echo "done: $svc ($name)"
  done
}

app_services() {  # the long-running services that are not stores (api, and workers of the profiles)
  local svc skip
  for svc in $(c config --services 2>/dev/null); do
    skip=
    for s in "${stores[@]}" "${one_shots[@]}"; do [ "$svc" != "$s" ] || skip=1; done
    [ -n "$skip" ] || echo "$svc"
  done
}

case ${1:-} in
  up)
    if [ "$(basename "$engine")" = docker ]; then
      c up -d --no-build --wait --wait-timeout "$timeout"
      exit
    fi
    mapfile -t apps < <(app_services)
    c up -d --no-build --no-deps "${stores[@]}"
    wait_healthy "${stores[@]}"
    c up -d --no-build --no-deps "${one_shots[@]}"
    wait_exited_ok "${one_shots[@]}"
    c up -d --no-build --no-deps "${apps[@]}"
    wait_healthy "${apps[@]}"
    ;;
  down) c down ;;
  purge) c down -v ;;
  *) echo "usage: $0 up|down|purge" >&2; exit 2 ;;
esac
