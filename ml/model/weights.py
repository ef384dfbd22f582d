"""Where a model's weight file is: resolution of ``ModelEntry.uri`` and its sha256 check.

Torch-free, like the manifest. Weight locations are a path relative to the
manifest's directory, an absolute local path, or ``s3://bucket/key``; this
library knows nothing of S3, so the caller passes a ``fetch`` callable that
downloads such a URI to a local file. Reading the file into a network is
:mod:`ml.model.checkpoint`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ml.errors import ModelUnavailable
from ml.io import sha256_file
from ml.model.manifest import ModelEntry

__all__ = ["resolve_ood_stats", "resolve_weights"]


def resolve_weights(
    entry: ModelEntry,
    manifest_dir: str | os.PathLike[str],
    fetch: Callable[[str], Path] | None = None,
    *,
    allow_unverified: bool = False,
) -> Path:
    """Local path of ``entry``'s weight file, verified against its sha256.

    Args:
        entry: the manifest entry.
        manifest_dir: directory of the manifest; relative ``uri`` values are resolved against it.
        fetch: for ``s3://`` URIs, a callable that downloads the URI and returns the local file
            (the service supplies it; this library has no S3 client).
        allow_unverified: accept an entry whose ``sha256`` is None (development only).

    Raises:
        ModelUnavailable: no sha256 and not allowed, ``s3://`` without ``fetch`` (or the fetch
            failed), missing file, or sha256 mismatch.
    """
    if entry.sha256 is None and not allow_unverified:
        raise ModelUnavailable(
            f"model {entry.name!r} has no sha256 in the manifest; refusing unverified weights "
            "(the operator must supply the file and its hash)"
        )
    return _resolve(entry.name, "weight file", entry.uri, entry.sha256, manifest_dir, fetch)


def resolve_ood_stats(
    entry: ModelEntry,
    manifest_dir: str | os.PathLike[str],
    fetch: Callable[[str], Path] | None = None,
) -> Path | None:
    """Local path of ``entry``'s OOD statistics file (checked against ``ood.sha256``), or None.

    Raises:
        ModelUnavailable: as :func:`resolve_weights` (the OOD file always has a sha256).
    """
    if entry.ood is None:
        return None
    return _resolve(entry.name, "OOD statistics file", entry.ood.uri, entry.ood.sha256, manifest_dir, fetch)


def _resolve(
    name: str,
    what: str,
    uri: str,
    sha256: str | None,
    manifest_dir: str | os.PathLike[str],
    fetch: Callable[[str], Path] | None,
) -> Path:
    if uri.startswith("s3://"):
        if fetch is None:
            raise ModelUnavailable(f"model {name!r}: {what} lives at {uri} and no fetcher was given")
        try:
            path = Path(fetch(uri))
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"model {name!r}: fetching {uri} failed: {exc}") from exc
    else:
        path = Path(uri)
        if not path.is_absolute():
            path = Path(manifest_dir) / path
    if not path.is_file():
        raise ModelUnavailable(f"model {name!r}: {what} {path} not found")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ModelUnavailable(
                f"model {name!r}: sha256 mismatch for {path.name}: "
                f"expected {sha256[:12]}…, got {actual[:12]}…"
            )
    return path
