"""The worker process: claim, lease, heartbeat, pipelined preprocessing, batched inference.

Threads of one worker process (architecture rule 4: this process alone owns the model):

- **main loop** (:meth:`Worker.run`): XREADGROUP new job ids (and XAUTOCLAIM
  entries of dead consumers) and hands each to :class:`~app.worker.claiming.Intake`,
  which claims the job in PostgreSQL with one conditional UPDATE (attempt += 1, lease),
  downloads the ZIP and submits it to the preprocessing process pool. At most
  ``prefetch + max_batch`` jobs are in flight.
- **inference thread** (:mod:`app.worker.batching`): takes prepared studies, forms batches
  of up to ``max_batch`` (waiting at most ``max_wait_ms`` for more), runs the model,
  computes the requested saliency (:mod:`app.worker.explaining`), writes blobs under
  attempt-scoped keys, then the result row guarded by the attempt
  (:mod:`app.worker.persisting`), then XACKs.
- **housekeeping thread** (:mod:`app.worker.housekeeping`): heartbeats (lease extension of
  held jobs, worker row), stage/progress updates coming from the pool, and the reconciler
  (expired leases, jobs over ``max_attempts``, queued jobs Redis lost); a **janitor**
  thread aborts abandoned multipart uploads.
- **webhook thread**: delivers the outbox (:mod:`app.webhooks`).
- **DICOMweb push thread**: sends DICOM results to clients' destinations (:mod:`app.worker.pushing`).

Any refusal of a study fails its job with the stable code; the worker goes on.
Unexpected errors give the attempt back (requeued while attempts remain).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

import torch

from app.config import Settings
from app.db import Database
from app.logs import logger
from app.metrics import WorkerMetrics
from app.migrate import check
from app.queue import JobMessage, JobQueue
from app.repository import Delivery, worker_gone
from app.storage import Storage, storage_from_settings
from app.webhooks import WebhookDispatcher
from app.worker.batching import Inference
from app.worker.claiming import Intake
from app.worker.context import HeldJobs, WorkerContext
from app.worker.explaining import warm_up
from app.worker.housekeeping import Housekeeping, janitor_loop
from app.worker.models import ModelCache
from app.worker.persisting import Outcomes
from app.worker.pushing import DicomPusher
from ml.inference import Predictor

__all__ = ["Worker", "run_worker"]


class Worker:
    """One worker process: the model(s) in memory, a preprocessing pool, the loops."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        db: Database | None = None,
        storage: Storage | None = None,
        jobs: JobQueue | None = None,
    ) -> None:
        settings.require_services()
        assert (
            settings.database_url and settings.redis_url and settings.s3_access_key and settings.s3_secret_key
        )
        self.s = settings
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.db = db or Database(settings.database_url, min_size=1, max_size=6, name="s4ct-worker")
        self._own_db = db is None
        self.storage = storage or storage_from_settings(settings)
        self.jobs = jobs or JobQueue.from_url(settings.redis_url, settings.stream, settings.group)
        self.stop_event = threading.Event()
        #: set by :meth:`stop` once the drain is over: heartbeats go on until then
        self._drained = threading.Event()
        self.held = HeldJobs()
        self.metrics = WorkerMetrics()
        self.metrics.watch(lambda: len(self.held), _gpu_memory)
        self.metrics_port: int | None = None
        ctx = WorkerContext(
            settings, self.id, self.db, self.storage, self.jobs, self.held, self.metrics, self.stop_event
        )
        self.models = ModelCache(ctx)
        self.outcomes = Outcomes(ctx)
        self.intake = Intake(ctx, self.models, self.outcomes)
        self.inference = Inference(ctx, self.intake, self.models, self.outcomes)
        self.housekeeping = Housekeeping(ctx, self.outcomes, self.intake.progress, self._drained)
        self._ctx = ctx
        self.pusher = DicomPusher(self.db, self.storage, settings)
        self.webhooks: WebhookDispatcher | None = None
        self._threads: list[threading.Thread] = []
        self._last_autoclaim = 0.0
        #: seconds :meth:`start` spent loading the model and warming up (None before)
        self.warm_up_s: float | None = None

    @property
    def predictors(self) -> dict[str, Predictor]:
        """The loaded models by name (the default also under ``"__default__"``)."""
        return self.models.loaded

    def predictor(self, name: str | None) -> Predictor:
        """Model ``name`` (None: the manifest's default), loaded on first use."""
        return self.models.get(name)

    @property
    def pool_generation(self) -> int:
        """How many preprocessing pools were started (a new one after a process died)."""
        return self.intake.pool_generation

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open connections, check the schema, load the default model, start the pool and threads."""
        if self.s.worker_metrics_port is not None:  # first: the model load is observed too
            self.metrics_port = self.metrics.serve(self.s.worker_metrics_port, self.s.host)
        if self._own_db:
            self.db.open()
        with self.db.conn() as conn:
            check(conn)
        self.jobs.ensure_group()
        self.storage.ping()
        self.s.work_path.mkdir(parents=True, exist_ok=True)
        self._warm_up()
        self.webhooks = _MeteredDispatcher(self.db, self.s, self.metrics)
        self.housekeeping.beat()  # registered (``/readyz`` ready) only now, warm
        for target, name in (
            (self.inference.loop, "inference"),
            (self.housekeeping.loop, "housekeeping"),
            (lambda: janitor_loop(self._ctx), "janitor"),
            (lambda: self.pusher.loop(self.stop_event), "dicomweb-push"),
        ):
            t = threading.Thread(target=target, name=f"s4ct-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.webhooks.start()
        logger.info(
            "worker {} started (device {}, batch ≤ {}, {} preprocessing process(es))",
            self.id,
            next(iter(self.predictors.values())).device,
            self.s.max_batch,
            self.s.preprocess_workers,
        )

    def _warm_up(self) -> None:
        """Load the default model, start the preprocessing pool and warm both up, concurrently.

        The pool's processes import the study reader and preprocess a small synthetic volume;
        this process imports Captum and the writers and runs that volume through the model,
        Grad-CAM and the files. The first job then costs what the next ones do.
        """
        t0 = time.perf_counter()
        predictor = self.predictor(None)  # the default model is loaded once, before taking work
        started = self.intake.new_pool(warm=predictor.preprocess_config)
        warm_up(predictor, self.s.work_path)
        try:
            for f in started:
                f.result(timeout=600)
        except Exception:
            logger.exception("the preprocessing pool did not warm up; starting a fresh one")
            self.intake.new_pool()
        self.warm_up_s = time.perf_counter() - t0
        logger.info("worker {} warm in {:.1f} s", self.id, self.warm_up_s)

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop taking work, let held jobs finish for up to ``drain_s``, give the rest back."""
        self.stop_event.set()
        deadline = time.monotonic() + drain_s
        while self.held and time.monotonic() < deadline:
            time.sleep(0.1)
        # Give the rest back while the heartbeat still extends their leases: joining the
        # pipeline threads can take seconds, and a lease that expires meanwhile is requeued
        # by another worker's reconciler with the attempt charged. A thread that finishes a
        # released attempt afterwards finds it no longer held (the attempt guard).
        for item in self.held.take_all():
            self.outcomes.release(item, "worker stopped", spend=False)
        self._drained.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.webhooks is not None:
            self.webhooks.stop()
        self.intake.shutdown()
        with contextlib.suppress(Exception), self.db.conn() as conn:
            worker_gone(conn, self.id)
        self.jobs.close()
        if self._own_db:
            self.db.close()
        self.metrics.close()
        logger.info("worker {} stopped after {} job(s)", self.id, self.outcomes.processed)

    def run(self) -> None:
        """Take work until :attr:`stop_event` is set (call :meth:`start` first)."""
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception:
                logger.exception("worker loop error; retrying in 1 s")
                self.stop_event.wait(1.0)

    def step(self, block_ms: int = 1000) -> int:
        """Read and start up to the free number of jobs; returns how many messages were handled."""
        free = self.s.prefetch + self.s.max_batch - len(self.held)
        if free <= 0:
            self.stop_event.wait(0.05)
            return 0
        messages: list[JobMessage] = []
        now = time.monotonic()
        if now - self._last_autoclaim > min(self.s.claim_idle_s / 2, 30.0):
            self._last_autoclaim = now
            messages += self.jobs.autoclaim(self.id, int(self.s.claim_idle_s * 1000), count=free)
        if len(messages) < free:
            messages += self.jobs.read(self.id, count=free - len(messages), block_ms=block_ms)
        for m in messages:
            self.intake.take(m)
        return len(messages)


class _MeteredDispatcher(WebhookDispatcher):
    """The webhook dispatcher, counting failed delivery attempts in the worker's metrics."""

    def __init__(self, db: Database, settings: Settings, metrics: WorkerMetrics) -> None:
        super().__init__(db, settings)
        self.metrics = metrics

    def _deliver(self, row: Delivery) -> bool:
        delivered = super()._deliver(row)
        if not delivered:
            self.metrics.webhook_failures.inc()
        return delivered


def _gpu_memory() -> dict[str, dict[str, int]]:
    """Bytes of GPU memory held by this process per device (empty before CUDA is initialised)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return {}
    return {
        f"cuda:{i}": {
            "allocated": int(torch.cuda.memory_allocated(i)),
            "reserved": int(torch.cuda.memory_reserved(i)),
            "peak_allocated": int(torch.cuda.max_memory_allocated(i)),
        }
        for i in range(torch.cuda.device_count())
    }


def run_worker(settings: Settings, install_signals: bool = True) -> None:
    """Process entry: start, run until SIGINT/SIGTERM, stop cleanly."""
    import signal

    w = Worker(settings)
    w.start()
    if install_signals:

        def _stop(signum: int, _frame: Any) -> None:
            logger.info("signal {}: stopping", signum)
            w.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    try:
        w.run()
    finally:
        w.stop(settings.drain_s)
