"""What became of a held attempt, written through the repository's outcome transactions.

Every path ends in :meth:`Outcomes.done`: the stream entry is acknowledged, the job leaves
the held set and its work directory is removed. A refusal (an error with a stable code)
fails the job; any other error gives the attempt back (requeued while attempts remain).
A stage boundary that finds the attempt no longer held (the job was cancelled, or its lease
was taken over) stops the work there (:class:`~app.worker.context.AttemptLostError`): nothing
more is stored, and files already uploaded for an outcome that can no longer be written are
deleted.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

from app.logs import logger, scrubber
from app.repository import ExplanationRecord, mark_failed, mark_succeeded, release_attempt, set_stage
from app.repository.dicom import DicomOutputs
from app.repository.drift import insert_drift_observation
from app.schemas import JobResult
from app.worker.context import AttemptLostError, InFlight, JobRefusedError, WorkerContext
from ml.errors import InputError, ModelUnavailable

__all__ = ["Outcomes"]


class Outcomes:
    """Records stages and outcomes of held attempts; counts the jobs this worker processed."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.metrics = ctx.metrics
        self.processed = 0

    def stage(self, item: InFlight, stage: str, progress: float) -> None:
        """Record a stage boundary; raises :class:`AttemptLostError` when the attempt is no longer held."""
        with self.db.conn() as conn:
            held = set_stage(conn, item.job_id, item.attempt, stage, progress)
        if not held:
            raise AttemptLostError(f"job {item.job_id} attempt {item.attempt} is no longer held")

    def succeeded(
        self,
        item: InFlight,
        result: JobResult | None,
        explanation: ExplanationRecord | None,
        dicom: DicomOutputs | None = None,
        observation: Mapping[str, Any] | None = None,
    ) -> None:
        """Store the result, explanation and DICOM rows; a lost lease drops them.

        ``observation``: the job's drift observation (:func:`app.drift.observation`), stored
        after the result; failing to store it never fails the job.
        """
        with self.db.conn() as conn:
            held = mark_succeeded(conn, item.job, item.timings, result, explanation, dicom)
        if not held:
            logger.warning(
                "job {} attempt {} was cancelled or lost its lease; result dropped", item.job_id, item.attempt
            )
            if explanation is not None:  # its files are referenced by nothing: remove them
                for blob in explanation.blobs.values():
                    with contextlib.suppress(Exception):
                        self.ctx.storage.delete(blob.key)
            self.metrics.job_finished("stale")
        else:
            self.processed += 1
            self.metrics.job_finished("succeeded", None, item.timings)
            if observation is not None:
                self._observe(item, observation)
            logger.info(
                "job {} succeeded in {:.2f} s{}",
                item.job_id,
                item.timings["total"],
                f" (p={result.probability:.3f})" if result else "",
            )
        self.done(item)

    def _observe(self, item: InFlight, observation: Mapping[str, Any]) -> None:
        try:
            with self.db.conn() as conn:
                insert_drift_observation(conn, item.job_id, observation)
        except Exception as e:
            logger.warning("job {}: drift observation not stored ({})", item.job_id, type(e).__name__)

    def fail_or_release(self, item: InFlight, err: BaseException) -> None:
        """Record a refusal (failed with its code) or give the attempt back; the item is done.

        Never raises: when the outcome cannot be written (PostgreSQL down), the job is dropped
        from this worker, its lease expires and the reconciler queues it again.
        """
        try:
            if isinstance(err, AttemptLostError):
                logger.info("job {} attempt {}: cancelled or taken over; stopped", item.job_id, item.attempt)
                self.metrics.job_finished("stale")
            else:
                self._record_failure(item, err)
        except Exception as e:
            logger.warning(
                "job {} attempt {}: outcome not recorded ({}); the lease expires and the job is requeued",
                item.job_id,
                item.attempt,
                type(e).__name__,
            )
        finally:
            self.done(item)

    def _record_failure(self, item: InFlight, err: BaseException) -> None:
        code = getattr(err, "code", None)
        if isinstance(err, InputError | ModelUnavailable | JobRefusedError) and code:
            detail = scrubber.scrub(str(getattr(err, "detail", "")))[:500]
            with self.db.conn() as conn:
                held = mark_failed(conn, item.job, item.timings, code, detail)
            logger.info("job {} failed: {}", item.job_id, code)
            self.processed += 1
            total = time.perf_counter() - item.t_claimed
            self.metrics.job_finished("failed" if held else "stale", code, {**item.timings, "total": total})
        else:
            # e.g. preprocessing cancelled by the stop: not the job's fault
            stopping = self.ctx.stop_event.is_set()
            if not stopping:
                logger.opt(exception=err).error(
                    "job {} attempt {}: unexpected error", item.job_id, item.attempt
                )
            self.release(item, f"{type(err).__name__}", spend=not stopping)

    def release(self, item: InFlight, detail: str, *, spend: bool = True) -> None:
        """Give the attempt back (``spend=False``: a graceful stop, not charged to the job)."""
        with self.db.conn() as conn:
            state = release_attempt(conn, item.job, f"unexpected error ({detail})", spend=spend)
        if state == "queued":
            with contextlib.suppress(Exception):
                self.ctx.jobs.enqueue([item.job_id], urgent=item.job.urgent)
        outcome = {"queued": "released", "failed": "failed"}.get(state or "", "stale")
        self.metrics.job_finished(outcome, "internal_error" if state == "failed" else None)

    def done(self, item: InFlight) -> None:
        with contextlib.suppress(Exception):
            self.ctx.jobs.ack(item.message)
        self.ctx.held.remove(item.job_id)
        shutil.rmtree(item.workdir, ignore_errors=True)
