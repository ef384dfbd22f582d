"""Build-time check of baked weights: every manifest entry with a local file is verified by sha256.

Run by the Dockerfile's worker target (``python deploy/docker/verify_weights.py /app/weights/manifest.json``).
Entries at ``s3://`` URIs are fetched by the worker at start (into ``S4CT_WEIGHTS_CACHE_DIR``);
entries without sha256 are refused at run time anyway, so they are only reported here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ml.errors import ModelUnavailable
from ml.model import Manifest, resolve_weights


def main(manifest_path: str) -> int:
    path = Path(manifest_path)
    manifest = Manifest.load(path)
    bad = 0
    for name, entry in sorted(manifest.entries.items()):
        if entry.uri.startswith("s3://"):
            print(f"{name}: {entry.uri} (fetched by the worker at start)")
        elif entry.sha256 is None:
            print(f"{name}: no sha256 (refused at run time until the operator sets it)")
        else:
            try:
                resolve_weights(entry, path.parent)
            except ModelUnavailable as e:
                print(f"{name}: {e}", file=sys.stderr)
                bad += 1
            else:
                print(f"{name}: {entry.uri} verified")
    default = manifest.get(None)
    if not default.uri.startswith("s3://") and default.sha256 is None:
        print(f"default model {default.name}: no sha256", file=sys.stderr)
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "weights/manifest.json"))
