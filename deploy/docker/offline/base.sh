#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm built from Debian packages only (no container registry):
# Debian 12 minbase with its Python 3.11, venv and pip, imported as a local image.
#
#   deploy/docker/offline/base.sh [IMAGE]      (default IMAGE: localhost/service4ct-base:bookworm)
#
# Needs root, mmdebstrap and docker or podman (S4CT_ENGINE picks one). DEBIAN_MIRROR names the
# mirror (default http://deb.debian.org/debian; its -security sibling is used for updates).
# Pass the result as PYTHON_IMAGE to deploy/docker/build.sh (docs/operations.md, "Offline build"),
# with the image ID printed last as PYTHON_IMAGE_ID: build.sh builds only from that very image.
set -euo pipefail
IMAGE=${1:-localhost/service4ct-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE=${S4CT_ENGINE:-$("$(dirname "$0")/../engine.sh")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$tmp/rootfs.tar" \
  "deb $MIRROR bookworm main" \
  "deb $MIRROR bookworm-updates main" \
  "deb ${MIRROR%/debian}/debian-security bookworm-security main"
"$ENGINE" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tmp/rootfs.tar" "$IMAGE" >/dev/null
"$ENGINE" image inspect --format '{{.Id}}' "$IMAGE"
