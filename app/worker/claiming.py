"""Claiming: a stream entry becomes a held attempt, its ZIP fetched and submitted to preprocessing.

The job is claimed in PostgreSQL with one conditional UPDATE (attempt += 1, lease); the
study is downloaded into the attempt's work directory and prepared in a process of the
preprocessing pool. Prepared studies (or the error that stopped them) land in
:attr:`Intake.ready`, where the inference thread takes them.
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from app.logs import logger
from app.queue import JobMessage
from app.repository import claim_attempt
from app.worker.context import InFlight, JobRefusedError, WorkerContext
from app.worker.handoff import sweep, unpack, usable_dir
from app.worker.importing import import_study
from app.worker.models import ModelCache
from app.worker.persisting import Outcomes
from app.worker.pipeline import Prepared, init_pool_process, mp_context, pool_ready, prepare_for_worker
from app.worker.retry import storage_retry
from ml.preprocess import PreprocessConfig

__all__ = ["Intake"]


class Intake:
    """Claims jobs, fetches their studies and runs the preprocessing pool."""

    def __init__(self, ctx: WorkerContext, models: ModelCache, outcomes: Outcomes) -> None:
        self.ctx = ctx
        self.s = ctx.settings
        self.models = models
        self.outcomes = outcomes
        self.ready: queue.Queue[tuple[InFlight, Prepared | BaseException]] = queue.Queue()
        self.mp = mp_context()
        #: (job id, attempt, stage, progress) reported by the pool processes
        self.progress: Any = self.mp.Queue()
        self.pool: ProcessPoolExecutor | None = None
        self.pool_generation = 0
        #: where pool processes hand prepared studies' large arrays back (None: through the pipe)
        self.handoff_dir = usable_dir(self.s.handoff_dir)

    # ------------------------------------------------------------------ the preprocessing pool
    def new_pool(self, warm: PreprocessConfig | None = None) -> list[Future[int]]:
        """Start a (new) pool: at start, and after a preprocessing process died.

        With ``warm`` (a preprocessing configuration) every process starts now and warms up
        (:func:`~app.worker.pipeline.init_pool_process`); the returned futures finish when
        they have. Without it processes start with the first studies.
        """
        old = self.pool
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        # at start, what workers that are gone left behind; after a pool died, what it was writing
        sweep(self.handoff_dir, own=old is not None)
        self.pool_generation += 1
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, self.s.preprocess_workers))
        self.pool = ProcessPoolExecutor(
            max_workers=self.s.preprocess_workers,
            mp_context=self.mp,
            initializer=init_pool_process,
            initargs=(self.progress, torch_threads, warm),
        )
        if warm is None:
            return []
        # spawned on demand: as many tasks at once as processes, so that each one starts
        return [self.pool.submit(pool_ready) for _ in range(self.s.preprocess_workers)]

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ claiming
    def take(self, m: JobMessage) -> None:
        """Claim the entry's job and start its attempt; an entry with nothing to do is acknowledged."""
        ctx = self.ctx
        if m.job_id is None:
            ctx.jobs.ack(m)
            return
        with ctx.db.conn() as conn:
            job = claim_attempt(conn, m.job_id, ctx.worker_id, self.s.lease_s)
        if job is None:
            # finished, held by another worker, or out of attempts: nothing to do for this entry
            ctx.jobs.ack(m)
            return
        item = InFlight(job, m, Path(tempfile.mkdtemp(prefix="job-", dir=self.s.work_path)))
        ctx.held.add(item)
        with logger.contextualize(job_id=str(item.job_id), attempt=item.attempt):
            logger.info("job {} attempt {} claimed", item.job_id, item.attempt)
            try:
                self._fetch_and_submit(item)
            except Exception as e:
                self.outcomes.fail_or_release(item, e)

    def _fetch_and_submit(self, item: InFlight) -> None:
        job = item.job
        study_key = job.study_s3_key
        t0 = time.perf_counter()
        zip_path = item.workdir / "study.zip"
        if study_key is not None:
            storage_retry(
                "fetch the study",
                lambda: self.ctx.storage.get_to_file(study_key, zip_path),
                retry_s=self.s.storage_retry_s,
                stop=self.ctx.stop_event,
            )
        elif not (job.study_id is None and import_study(self.ctx, item, zip_path)):
            raise JobRefusedError("study_not_found", "the study was deleted before the job ran")
        item.timings["fetching"] = time.perf_counter() - t0
        self.outcomes.stage(item, "reading", 0.05)  # a stage boundary: stops a cancelled job here
        predictor = self.models.get(job.model)
        assert self.pool is not None
        item.pool_generation = self.pool_generation
        fut = self.pool.submit(
            prepare_for_worker,
            self.handoff_dir,
            os.getpid(),
            item.job_id,
            item.attempt,
            str(zip_path),
            job.series_uid,
            predictor.preprocess_config,
            job.explain != "none",
            self.ctx.settings.dicom_outputs and job.kind == "predict",
        )
        fut.add_done_callback(lambda f: self._prepared(item, f))

    def _prepared(self, item: InFlight, fut: Future[Any]) -> None:
        try:
            prepared = unpack(fut.result())
            self.ready.put((item, prepared))
        except BaseException as e:
            self.ready.put((item, e))
