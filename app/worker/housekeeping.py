"""The housekeeping and janitor threads of a worker.

- **housekeeping**: heartbeats (lease extension of held jobs, the worker row), the
  stage/progress updates coming from the preprocessing pool, and the reconciler
  (expired leases, jobs over ``max_attempts``, queued jobs Redis lost).
- **janitor**: aborts multipart uploads abandoned for ``upload_abandon_s``; deletes what is past
  its retention and the blobs of deleted studies and jobs (:mod:`app.retention`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import Any

from app.logs import logger
from app.repository import extend_leases, mark_enqueued, reconcile_jobs, set_stage, worker_seen
from app.retention import retention_pass
from app.storage import StorageError
from app.worker.context import WorkerContext
from app.worker.persisting import Outcomes

__all__ = ["Housekeeping", "janitor_loop"]


class Housekeeping:
    """Heartbeat, progress and reconciler of one worker (its own thread: :meth:`loop`)."""

    def __init__(
        self, ctx: WorkerContext, outcomes: Outcomes, progress: Any, drained: threading.Event
    ) -> None:
        """``progress``: the pool's stage queue; ``drained``: set when a stopping worker is done."""
        self.ctx = ctx
        self.s = ctx.settings
        self.db = ctx.db
        self.outcomes = outcomes
        self.progress = progress
        self.drained = drained
        self._last_reconcile = 0.0

    def beat(self) -> None:
        """Extend the leases of the held jobs and mark this worker alive."""
        held = self.ctx.held.attempts()
        with self.db.conn() as conn:
            still = extend_leases(conn, held, self.s.lease_s)
            worker_seen(
                conn,
                self.ctx.worker_id,
                {"held": len(held), "processed": self.outcomes.processed, "pid": os.getpid()},
            )
        lost = {j for j, _ in held} - still
        for j in lost:
            logger.warning("job {}: no longer held (cancelled, or another attempt took it over)", j)

    def drain_progress(self) -> None:
        """Write the stages the pool processes reported."""
        while True:
            try:
                job_id, attempt, stage, progress = self.progress.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            with self.db.conn() as conn:
                set_stage(conn, uuid.UUID(job_id), attempt, stage, progress)

    def reconcile(self) -> dict[str, int]:
        """Repair the queue from PostgreSQL (architecture rule 1); returns counts of what was done."""
        with self.db.conn() as conn:
            done = reconcile_jobs(
                conn,
                stale_after_s=max(self.s.reconcile_s, 5.0),
                idempotency_ttl_s=self.s.idempotency_ttl_s,
                priority_age_s=self.s.priority_age_s,
            )
        lost = self.ctx.jobs.reconcile(done.stale, done.urgent)
        self.ctx.jobs.enqueue(done.requeued, done.urgent)
        self.ctx.jobs.enqueue(done.promoted, urgent=True)  # their routine entries stay: first read wins
        if lost:
            with self.db.conn() as conn:
                mark_enqueued(conn, lost)
            logger.warning("reconciler: re-enqueued {} queued job(s) missing from the stream", len(lost))
        counts = {
            "failed": done.failed,
            "requeued": len(done.requeued),
            "lost": len(lost),
            "promoted": len(done.promoted),
        }
        for action, n in counts.items():
            if n:
                self.ctx.metrics.reconciled.labels(action).inc(n)
        return counts

    def loop(self) -> None:
        # A stopping worker keeps extending the leases of the jobs it drains (else another
        # worker takes them over and the drained results are dropped); it no longer reconciles.
        last_beat = time.monotonic()
        while not self.drained.is_set():
            self.drained.wait(0.2)
            try:
                self.drain_progress()
                now = time.monotonic()
                if now - last_beat >= self.s.heartbeat_s:
                    last_beat = now
                    self.beat()
                if not self.ctx.stop_event.is_set() and now - self._last_reconcile >= self.s.reconcile_s:
                    self._last_reconcile = now
                    self.reconcile()
            except Exception:
                logger.exception("housekeeping error")


def janitor_loop(ctx: WorkerContext) -> None:
    """Abort multipart uploads abandoned for ``upload_abandon_s`` (an API killed mid-upload, or
    an abort that could not reach S3), and delete what is past its retention and the blobs of
    deleted studies and jobs (:func:`app.retention.retention_pass`, every ``retention_interval_s``).
    Its own thread: a hung object store must not delay the heartbeats."""
    s = ctx.settings
    abandon_s = s.upload_abandon_s
    every = {"uploads": min(abandon_s / 4, 900.0), "retention": s.retention_interval_s}
    last = dict.fromkeys(every, time.monotonic())
    while not ctx.stop_event.wait(min(every.values())):
        now = time.monotonic()
        if now - last["retention"] >= every["retention"]:
            last["retention"] = now
            try:
                retention_pass(ctx.db, ctx.storage, s)
            except Exception:
                logger.exception("janitor: retention pass failed (retried next pass)")
        if now - last["uploads"] < every["uploads"]:
            continue
        last["uploads"] = now
        try:
            aborted = ctx.storage.abort_incomplete_uploads("", older_than_s=abandon_s)
        except StorageError as e:
            logger.warning("janitor: listing incomplete uploads failed ({})", e.code)
            continue
        if aborted:
            logger.warning("janitor: aborted {} abandoned multipart upload(s)", aborted)
