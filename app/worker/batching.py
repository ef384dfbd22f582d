"""The inference thread: prepared studies in batches through the model, then saliency and saving.

Batches hold up to ``max_batch`` studies of one model, waiting at most ``max_wait_ms``
for more, and only while another held study is still being prepared. Each job of a batch
then gets its saliency (when asked for), its files uploaded, and its result row written
guarded by its attempt.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from app.drift import observation
from app.logs import logger, scrubber
from app.worker.claiming import Intake
from app.worker.context import InFlight, WorkerContext
from app.worker.dicom import finding_of, write_dicom
from app.worker.explaining import Saliency, check_explain_budget, compute_saliency, upload
from app.worker.models import ModelCache
from app.worker.persisting import Outcomes
from app.worker.pipeline import Prepared, build_result
from app.worker.shadow import ShadowRunner
from ml.explain.fused import can_fuse, forward_with_gradcam
from ml.inference import Predictor

__all__ = ["Inference"]

Ready = tuple[InFlight, Prepared | BaseException]


class Inference:
    """Takes what :class:`Intake` prepared, runs the model in batches and finishes each job."""

    def __init__(self, ctx: WorkerContext, intake: Intake, models: ModelCache, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.s = ctx.settings
        self.intake = intake
        self.models = models
        self.outcomes = outcomes
        self.shadows = ShadowRunner(ctx, models)

    def loop(self) -> None:
        """Run until the worker stops and holds nothing."""
        ctx = self.ctx
        while not (ctx.stop_event.is_set() and not ctx.held):
            try:
                self.step()
            except Exception:  # e.g. PostgreSQL down: this thread must outlive the outage
                logger.exception("inference loop error; going on")
                ctx.stop_event.wait(0.5)

    def _next_batch(self) -> list[Ready]:
        ready = self.intake.ready
        try:
            first = ready.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        if isinstance(first[1], BaseException):
            return batch
        deadline = time.monotonic() + self.s.max_wait_ms / 1000.0
        while len(batch) < self.s.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._more_coming(batch):
                break
            try:
                nxt = ready.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(nxt)
            if isinstance(nxt[1], BaseException):
                break
        return batch

    def _more_coming(self, batch: list[Ready]) -> bool:
        """Whether another study may still join ``batch``: one this worker holds is being prepared.

        A study arrives only through a claimed attempt, and a study claimed from now on needs
        its fetch and preprocessing (far longer than ``max_wait_ms``) before it could join: when
        the worker holds nothing besides the batch, waiting would only delay it.
        """
        return len(self.ctx.held) > len(batch)

    def step(self) -> None:
        batch = self._next_batch()
        if not batch:
            return
        good: list[tuple[InFlight, Prepared]] = []
        for item, prep in batch:
            if isinstance(prep, BaseException):
                if (
                    isinstance(prep, BrokenProcessPool)
                    and item.pool_generation == self.intake.pool_generation
                ):
                    logger.error("a preprocessing process died; starting a new pool")
                    self.intake.new_pool()
                self.outcomes.fail_or_release(item, prep)
            else:
                scrubber.register(prep.phi_tokens)
                prep.phi_tokens = []
                item.timings.update(prep.timings)
                good.append((item, prep))
        by_model: dict[str, list[tuple[InFlight, Prepared]]] = {}
        for item, prep in good:
            by_model.setdefault(item.job.model, []).append((item, prep))
        for model, group in by_model.items():
            try:
                self._run_group(model, group)
            except Exception as e:
                for item, _ in group:
                    if item.job_id in self.ctx.held:
                        self.outcomes.fail_or_release(item, e)

    def _run_group(self, model: str, group: list[tuple[InFlight, Prepared]]) -> None:
        predictor = self.models.get(model)
        predict = [(i, p) for i, p in group if i.job.kind == "predict"]
        preds: list[Any] = []
        maps: dict[Any, torch.Tensor] = {}
        batch: torch.Tensor | None = None
        voxel_mm: list[tuple[float, float, float]] = []
        if predict:
            predict = [(i, p) for i, p in predict if self._reached(i, "inference", 0.6)]
        if predict:
            self.ctx.metrics.batch_size.observe(len(predict))
            t0 = time.perf_counter()
            batch = torch.from_numpy(np.concatenate([p.tensor for _, p in predict], axis=0))
            voxel_mm = [p.geometry.model_voxel_mm() for _, p in predict]
            if all(can_fuse(predictor, i.job.explain, i.job.explain_params) for i, _ in predict):
                # Grad-CAM in the prediction's forward pass: one pass instead of two
                fused = forward_with_gradcam(predictor, batch)
                with torch.inference_mode():
                    preds = predictor.predict(batch, voxel_mm, forward=(fused.logits, fused.features))
                maps = {i.job_id: fused.maps[k] for k, (i, _) in enumerate(predict)}
            else:
                with torch.inference_mode():
                    preds = predictor.predict(batch, voxel_mm)
            dt = (time.perf_counter() - t0) / len(predict)
            for item, _ in predict:
                item.timings["inference"] = dt
        by_job = {i.job_id: pred for (i, _), pred in zip(predict, preds, strict=True)}
        for item, prep in group:
            if item.job.kind == "predict" and item.job_id not in by_job:
                continue  # cancelled or taken over before the forward pass
            with logger.contextualize(job_id=str(item.job_id), attempt=item.attempt):
                try:
                    self._finish_one(predictor, item, prep, by_job.get(item.job_id), maps.get(item.job_id))
                except Exception as e:
                    self.outcomes.fail_or_release(item, e)
        if batch is not None:  # after the primary's results: a shadow never delays nor fails them
            self.shadows.run(predictor, [i for i, _ in predict], batch, voxel_mm)

    def _reached(self, item: InFlight, stage: str, progress: float) -> bool:
        """Record the stage boundary; an attempt no longer held stops here (False)."""
        try:
            self.outcomes.stage(item, stage, progress)
        except Exception as e:
            self.outcomes.fail_or_release(item, e)
            return False
        return True

    def _finish_one(
        self, predictor: Predictor, item: InFlight, prep: Prepared, pred: Any, raw_map: torch.Tensor | None
    ) -> None:
        saliency: Saliency | None = None
        if item.job.explain != "none":
            check_explain_budget(
                predictor, item, max_passes=self.s.explain_max_passes, max_bytes=self.s.explain_max_bytes
            )
            self.outcomes.stage(item, "explaining", 0.7)
            t0 = time.perf_counter()
            saliency = compute_saliency(predictor, item, prep, raw_map)
            item.timings["explaining"] = time.perf_counter() - t0
        self.outcomes.stage(item, "saving", 0.9)
        t0 = time.perf_counter()
        if saliency is not None:
            upload(saliency, self.ctx.storage, retry_s=self.s.storage_retry_s, stop=self.ctx.stop_event)
        dicom = None
        if pred is not None and prep.source is not None:
            finding = finding_of(pred, predictor.entry, saliency)
            dicom = write_dicom(
                item,
                prep,
                finding,
                saliency,
                self.ctx.storage,
                retry_s=self.s.storage_retry_s,
                stop=self.ctx.stop_event,
            )
        item.timings["saving"] = time.perf_counter() - t0
        item.timings["total"] = time.perf_counter() - item.t_claimed
        result = (
            build_result(item.job_id, item.attempt, predictor.entry, pred, prep.qc, item.timings)
            if pred is not None
            else None
        )
        observed = observation(result, prep.drift_header) if result is not None else None
        self.outcomes.succeeded(
            item, result, saliency.record if saliency is not None else None, dicom, observation=observed
        )
