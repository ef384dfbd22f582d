"""Build-time check of baked weights: every manifest entry with a local file is verified by sha256,
and so is its out-of-distribution statistics file when the entry names one.

Run by the Dockerfile's worker target (``python deploy/docker/verify_weights.py /app/weights/manifest.json``).
Entries at ``s3://`` URIs are fetched by the worker at start (into ``S4CT_WEIGHTS_CACHE_DIR``);
entries without sha256 are refused at run time anyway, so they are only reported here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ml.errors import ModelUnavailable
from ml.model import Manifest
from ml.model.weights import resolve_ood_stats, resolve_weights


def _verify(name: str, uri: str, resolve: Callable[[], object]) -> int:
    """1 when ``resolve`` refuses the file (missing, wrong sha256), else 0."""
    try:
        resolve()
    except ModelUnavailable as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    print(f"{name}: {uri} verified")
    return 0


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
            bad += _verify(name, entry.uri, partial(resolve_weights, entry, path.parent))
        if entry.ood is not None and not entry.ood.uri.startswith("s3://"):
            bad += _verify(name, entry.ood.uri, partial(resolve_ood_stats, entry, path.parent))
    default = manifest.get(None)
    if not default.uri.startswith("s3://") and default.sha256 is None:
        print(f"default model {default.name}: no sha256", file=sys.stderr)
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "weights/manifest.json"))
