"""Which models of the manifest can be served: their weight (and OOD statistics) files exist and hash right.

The API reads it for ``GET /v1/models`` (``available``, ``unavailable_reason``) and refuses a job
for a model that cannot be served (422 ``model_unavailable``) instead of queueing a job that
fails later. Local files are hashed once per (path, modification time, size); a file in S3
(``s3://bucket/key``) is checked for presence (HEAD, remembered for a minute) and hashed by
the worker when it downloads it. Torch-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ml.io import sha256_file
from ml.model import Manifest, ModelEntry

__all__ = ["ModelStatus", "unavailable_reason"]

#: ``head(bucket, key)`` → the object exists (raises when the store cannot tell)
Head = Callable[[str, str], bool]

_S3_TTL_S = 60.0


class ModelStatus:
    """Availability of each model of one manifest (thread-safe; cached)."""

    def __init__(self, manifest: Manifest, manifest_dir: Path, head: Head, local_files: bool = True) -> None:
        """``local_files``: this process can read the local files the manifest names (False where
        the API runs apart from the worker's weights, e.g. the api image, which carries the
        manifest only): then only the manifest and files in S3 are checked here."""
        self.manifest = manifest
        self.dir = manifest_dir
        self.head = head
        self.local_files = local_files
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._s3: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def reason(self, name: str) -> str | None:
        """Why model ``name`` cannot be served, or None when it can."""
        entry = self.manifest.entries.get(name)
        if entry is None:
            return f"unknown model {name!r}"
        return unavailable_reason(entry, self._file_problem)

    def _file_problem(self, what: str, uri: str, sha256: str) -> str | None:
        if uri.startswith("s3://"):
            return None if self._s3_exists(uri) else f"{what} {uri} not found"
        if not self.local_files:
            return None  # the worker checks it when it loads the model
        path = Path(uri) if Path(uri).is_absolute() else self.dir / uri
        try:
            st = path.stat()
        except OSError:
            return f"{what} {path.name} not found"
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            actual = self._hashes.get(key)
        if actual is None:
            actual = sha256_file(path)
            with self._lock:
                self._hashes[key] = actual
        if actual != sha256:
            return f"{what} {path.name} does not hash to the manifest's sha256"
        return None

    def _s3_exists(self, uri: str) -> bool:
        now = time.monotonic()
        with self._lock:
            hit = self._s3.get(uri)
        if hit is not None and now - hit[0] < _S3_TTL_S:
            return hit[1]
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            exists = self.head(bucket, key)
        except Exception:  # the store cannot tell now: the worker decides when it loads the model
            return True
        with self._lock:
            self._s3[uri] = (now, exists)
        return exists


def unavailable_reason(entry: ModelEntry, problem: Callable[[str, str, str], str | None]) -> str | None:
    """Why ``entry`` cannot be served (``problem(what, uri, sha256)`` checks one file), or None."""
    if entry.sha256 is None:
        return "the manifest gives no sha256 for its weights (unverified weights are refused)"
    found = problem("weight file", entry.uri, entry.sha256)
    if found is None and entry.ood is not None:
        found = problem("OOD statistics file", entry.ood.uri, entry.ood.sha256)
    return found
