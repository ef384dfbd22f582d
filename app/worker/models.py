"""The models a worker holds in memory, loaded once each (weights fetched from S3 when needed)."""

from __future__ import annotations

import time
from pathlib import Path

from app.worker.context import WorkerContext
from ml.inference import Predictor

__all__ = ["ModelCache"]


class ModelCache:
    """Predictors by model name (``None``: the manifest's default), loaded on first use."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.s = ctx.settings
        #: loaded predictors under their name, the default also under ``"__default__"``
        self.loaded: dict[str, Predictor] = {}

    def get(self, name: str | None) -> Predictor:
        key = name or "__default__"
        if key not in self.loaded:
            t0 = time.perf_counter()
            p = Predictor.from_manifest(
                self.s.manifest_path, name, device=self.s.device, fetch=self._fetch_weights
            )
            self.ctx.metrics.model_load_seconds.labels(p.entry.name).set(time.perf_counter() - t0)
            self.loaded[key] = p
            self.loaded[p.entry.name] = p
        return self.loaded[key]

    def _fetch_weights(self, uri: str) -> Path:
        """Download ``s3://bucket/key`` weights into the cache directory (once)."""
        bucket_key = uri.removeprefix("s3://")
        bucket, _, key = bucket_key.partition("/")
        dest = self.s.weights_cache_path / bucket / key
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".part")
            self.ctx.storage.client.download_file(bucket, key, str(tmp))
            tmp.replace(dest)
        return dest
