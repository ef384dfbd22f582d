#!/usr/bin/env bash
# Re-lock requirements/{api,worker}.txt from requirements/*.in (Linux x86_64, CPython 3.11,
# with hashes: the Dockerfile installs them with --require-hashes).
# Usage: deploy/lock-requirements.sh [--upgrade]   (needs uv: `pip install uv`)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
for target in api worker; do
  "$UV" pip compile "requirements/$target.in" -o "requirements/$target.txt" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --no-emit-index-url --quiet \
    --custom-compile-command "deploy/lock-requirements.sh" "$@"
done
echo "locked: requirements/{api,worker}.txt"
