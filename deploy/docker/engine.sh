#!/bin/sh
# Prints the container engine to use: $S4CT_ENGINE if set (`none`: no engine), else docker when
# its daemon answers, else podman when it works; exits 1 (printing nothing) when none is usable.
if [ "${S4CT_ENGINE:-}" = none ]; then exit 1; fi
if [ -n "${S4CT_ENGINE:-}" ]; then echo "$S4CT_ENGINE"; exit 0; fi
for engine in docker podman; do
  if command -v "$engine" >/dev/null 2>&1 && "$engine" info >/dev/null 2>&1; then
    echo "$engine"; exit 0
  fi
done
exit 1
