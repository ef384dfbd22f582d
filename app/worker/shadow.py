"""Shadow models in the worker: a manifest entry with ``shadow_of`` runs on a share of its primary's jobs.

After a batch's primary results are stored, each shadow of the batch's model runs on the
same preprocessed tensors (a shadow takes its primary's input: checked by the manifest) for
the jobs in the ``shadow_share`` (:func:`in_share`: a hash of the job id, so every attempt of
a job agrees), and its probability, label and OOD check go to ``shadow_results``. Nothing of
it reaches the client (not the result, the job status, the webhooks or the DICOM outputs). A
shadow that fails (weights missing, out of memory, PostgreSQL refusing the row) is logged and
skipped: the primary's jobs have already succeeded; one that cannot be loaded is not tried again
for :data:`RETRY_LOAD_S`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence

import torch

from app.logs import logger
from app.repository.drift import insert_shadow_result
from app.worker.context import InFlight, WorkerContext
from app.worker.models import ModelCache
from ml.inference import Predictor
from ml.model import Manifest

__all__ = ["ShadowRunner", "in_share"]

#: a shadow that could not be loaded is not tried again for this long (s)
RETRY_LOAD_S = 300.0


def in_share(job_id: uuid.UUID, share: float) -> bool:
    """Whether ``job_id`` is among the ``share`` (in [0, 1]) of jobs a shadow runs on (deterministic)."""
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(job_id.bytes).digest()[:8], "big")
    return h < share * 2.0**64


class ShadowRunner:
    """Runs the shadows of a batch's model; a worker holds one."""

    def __init__(self, ctx: WorkerContext, models: ModelCache) -> None:
        self.ctx, self.models = ctx, models
        self.share = ctx.settings.shadow_share
        try:
            manifest = Manifest.load(ctx.settings.manifest_path)
        except (OSError, ValueError):
            manifest = None  # the primary's load reports it
        #: primary name → names of its shadows
        self.shadows: dict[str, list[str]] = {}
        #: shadow name → monotonic time before which its load is not retried
        self._unloadable: dict[str, float] = {}
        if manifest is not None:
            for name, entry in manifest.entries.items():
                if entry.shadow_of is not None:
                    self.shadows.setdefault(entry.shadow_of, []).append(name)

    def run(
        self,
        primary: Predictor,
        items: Sequence[InFlight],
        batch: torch.Tensor,
        voxel_mm: Sequence[tuple[float, float, float]],
    ) -> int:
        """Run every shadow of ``primary`` on its share of ``items`` (rows of ``batch``); rows stored."""
        stored = 0
        chosen = [k for k, item in enumerate(items) if in_share(item.job_id, self.share)]
        if not chosen:
            return 0
        for name in self.shadows.get(primary.entry.name, []):
            if self._unloadable.get(name, 0.0) > time.monotonic():
                continue
            try:
                shadow = self._load(name)
                with torch.inference_mode():
                    preds = shadow.predict(batch[chosen], [voxel_mm[k] for k in chosen])
                with self.ctx.db.conn() as conn:
                    for k, pred in zip(chosen, preds, strict=True):
                        insert_shadow_result(
                            conn,
                            items[k].job_id,
                            name,
                            primary.entry.name,
                            pred.probability,
                            pred.label,
                            None if pred.ood is None else pred.ood.score,
                            None if pred.ood is None else pred.ood.flagged,
                        )
                        stored += 1
            except Exception as e:
                logger.warning(
                    "shadow model {} skipped on {} job(s) ({}); the primary's results are unaffected",
                    name,
                    len(chosen),
                    type(e).__name__,
                )
        return stored

    def _load(self, name: str) -> Predictor:
        try:
            return self.models.get(name)
        except Exception:
            self._unloadable[name] = time.monotonic() + RETRY_LOAD_S
            raise
