"""The worker loop: claim, lease, heartbeat, pipelined preprocessing, batched inference.

Threads of one worker process (DESIGN rule 4: this process alone owns the model):

- **main loop** (:meth:`Worker.run`): XREADGROUP new job ids (and XAUTOCLAIM
  entries of dead consumers), claims each job in PostgreSQL with one conditional
  UPDATE (attempt += 1, lease), downloads the ZIP and submits it to the
  preprocessing process pool. At most ``prefetch + max_batch`` jobs are in flight.
- **inference thread**: takes prepared studies, forms batches of up to
  ``max_batch`` (waiting at most ``max_wait_ms`` for more), runs the model,
  computes the requested saliency, writes blobs under attempt-scoped keys, then
  the result row guarded by the attempt, then XACKs.
- **housekeeping thread**: heartbeats (lease extension of held jobs, worker row),
  stage/progress updates coming from the pool, and the reconciler (expired
  leases, jobs over ``max_attempts``, queued jobs Redis lost).
- **webhook thread**: delivers the outbox (:mod:`app.webhooks`).

Any refusal of a study fails its job with the stable code; the worker goes on.
Unexpected errors give the attempt back (requeued while attempts remain).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from app.config import Settings
from app.db import Database
from app.logs import logger, scrubber
from app.metrics import WorkerMetrics
from app.migrate import check
from app.queue import JobMessage, JobQueue
from app.repository import (
    claim_job,
    extend_leases,
    fail_exhausted,
    finish_job,
    get_job,
    insert_result,
    mark_enqueued,
    outbox_add,
    purge_idempotency,
    queued_before,
    release_job,
    requeue_expired,
    set_stage,
    upsert_explanation,
    worker_gone,
    worker_seen,
)
from app.storage import ObjectNotFoundError, Storage, StorageError, storage_from_settings
from app.webhooks import WebhookDispatcher, job_event
from app.worker.pipeline import Prepared, build_result, init_pool_process, mp_context, prepare_study
from ml.errors import InputError, ModelUnavailable
from ml.inference import Predictor

__all__ = ["InFlight", "Worker"]

T = TypeVar("T")


class _StaleAttemptError(Exception):
    """The attempt no longer holds the job (lease lost): its writes are dropped."""


@dataclass
class InFlight:
    """A job held by this worker."""

    job: dict[str, Any]
    attempt: int
    message: JobMessage
    workdir: Path
    t_claimed: float = field(default_factory=time.perf_counter)
    pool_generation: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def job_id(self) -> uuid.UUID:
        jid: uuid.UUID = self.job["id"]
        return jid


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
        self.held: dict[uuid.UUID, InFlight] = {}
        self._held_lock = threading.Lock()
        self.ready: queue.Queue[tuple[InFlight, Prepared | BaseException]] = queue.Queue()
        self.predictors: dict[str, Predictor] = {}
        self.mp = mp_context()
        self.progress: Any = self.mp.Queue()
        self.pool: ProcessPoolExecutor | None = None
        self.pool_generation = 0
        self.webhooks: WebhookDispatcher | None = None
        self.processed = 0
        self._threads: list[threading.Thread] = []
        self._last_reconcile = 0.0
        self._last_autoclaim = 0.0
        self.metrics = WorkerMetrics()
        self.metrics.watch(lambda: len(self.held), _gpu_memory)
        self.metrics_port: int | None = None

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
        self.predictor(None)  # the default model is loaded once, before taking work
        self._new_pool()
        self.webhooks = _MeteredDispatcher(self.db, self.s, self.metrics)
        self._beat()
        for target, name in (
            (self._inference_loop, "inference"),
            (self._housekeeping_loop, "housekeeping"),
            (self._janitor_loop, "janitor"),
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

    def _new_pool(self) -> None:
        old = self.pool
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        self.pool_generation += 1
        torch_threads = max(1, (os.cpu_count() or 1) // max(1, self.s.preprocess_workers))
        self.pool = ProcessPoolExecutor(
            max_workers=self.s.preprocess_workers,
            mp_context=self.mp,
            initializer=init_pool_process,
            initargs=(self.progress, torch_threads),
        )

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
        with self._held_lock:
            leftover = list(self.held.values())
            self.held.clear()
        for item in leftover:
            self._release(item, "worker stopped", spend=False)
        self._drained.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception), self.db.conn() as conn:
            worker_gone(conn, self.id)
        self.jobs.close()
        if self._own_db:
            self.db.close()
        self.metrics.close()
        logger.info("worker {} stopped after {} job(s)", self.id, self.processed)

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
            self._take(m)
        return len(messages)

    # ------------------------------------------------------------------ models
    def predictor(self, name: str | None) -> Predictor:
        key = name or "__default__"
        if key not in self.predictors:
            t0 = time.perf_counter()
            p = Predictor.from_manifest(
                self.s.manifest_path, name, device=self.s.device, fetch=self._fetch_weights
            )
            self.metrics.model_load_seconds.labels(p.entry.name).set(time.perf_counter() - t0)
            self.predictors[key] = p
            self.predictors[p.entry.name] = p
        return self.predictors[key]

    def _fetch_weights(self, uri: str) -> Path:
        """Download ``s3://bucket/key`` weights into the cache directory (once)."""
        bucket_key = uri.removeprefix("s3://")
        bucket, _, key = bucket_key.partition("/")
        dest = self.s.weights_cache_path / bucket / key
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + ".part")
            self.storage.client.download_file(bucket, key, str(tmp))
            tmp.replace(dest)
        return dest

    # ------------------------------------------------------------------ claiming
    def _take(self, m: JobMessage) -> None:
        if m.job_id is None:
            self.jobs.ack(m.entry_id)
            return
        with self.db.tx() as conn:
            job = claim_job(conn, m.job_id, self.id, self.s.lease_s)
            if job is None:
                failed = fail_exhausted(conn, m.job_id)
                for row in failed:
                    self._outbox(conn, row, "failed")
        if job is None:
            # finished, held by another worker, or out of attempts: nothing to do for this entry
            self.jobs.ack(m.entry_id)
            return
        item = InFlight(job, job["attempt"], m, Path(tempfile.mkdtemp(prefix="job-", dir=self.s.work_path)))
        with self._held_lock:
            self.held[item.job_id] = item
        with logger.contextualize(job_id=str(item.job_id), attempt=item.attempt):
            logger.info("job {} attempt {} claimed", item.job_id, item.attempt)
            try:
                self._fetch_and_submit(item)
            except Exception as e:
                self._fail_or_release(item, e)

    def _fetch_and_submit(self, item: InFlight) -> None:
        job = item.job
        if job["study_s3_key"] is None:
            raise JobRefusedError("study_not_found", "the study was deleted before the job ran")
        t0 = time.perf_counter()
        zip_path = item.workdir / "study.zip"
        self._storage_retry(
            "fetch the study", lambda: self.storage.get_to_file(job["study_s3_key"], zip_path)
        )
        item.timings["fetching"] = time.perf_counter() - t0
        predictor = self.predictor(job["model"])
        assert self.pool is not None
        item.pool_generation = self.pool_generation
        fut = self.pool.submit(
            prepare_study,
            item.job_id,
            item.attempt,
            str(zip_path),
            job["series_uid"],
            predictor.preprocess_config,
            job["explain"] != "none",
        )
        fut.add_done_callback(lambda f: self._prepared(item, f))

    def _prepared(self, item: InFlight, fut: Future[Prepared]) -> None:
        try:
            self.ready.put((item, fut.result()))
        except BaseException as e:
            self.ready.put((item, e))

    # ------------------------------------------------------------------ inference
    def _next_batch(self) -> list[tuple[InFlight, Prepared | BaseException]]:
        try:
            first = self.ready.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        if isinstance(first[1], BaseException):
            return batch
        deadline = time.monotonic() + self.s.max_wait_ms / 1000.0
        while len(batch) < self.s.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                nxt = self.ready.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(nxt)
            if isinstance(nxt[1], BaseException):
                break
        return batch

    def _inference_loop(self) -> None:
        while not (self.stop_event.is_set() and not self.held):
            try:
                self._inference_step()
            except Exception:  # e.g. PostgreSQL down: this thread must outlive the outage
                logger.exception("inference loop error; going on")
                self.stop_event.wait(0.5)

    def _inference_step(self) -> None:
        batch = self._next_batch()
        if not batch:
            return
        good: list[tuple[InFlight, Prepared]] = []
        for item, prep in batch:
            if isinstance(prep, BaseException):
                if isinstance(prep, BrokenProcessPool) and item.pool_generation == self.pool_generation:
                    logger.error("a preprocessing process died; starting a new pool")
                    self._new_pool()
                self._fail_or_release(item, prep)
            else:
                scrubber.register(prep.phi_tokens)
                prep.phi_tokens = []
                item.timings.update(prep.timings)
                good.append((item, prep))
        by_model: dict[str, list[tuple[InFlight, Prepared]]] = {}
        for item, prep in good:
            by_model.setdefault(item.job["model"], []).append((item, prep))
        for model, group in by_model.items():
            try:
                self._run_group(model, group)
            except Exception as e:
                for item, _ in group:
                    if item.job_id in self.held:
                        self._fail_or_release(item, e)

    def _run_group(self, model: str, group: list[tuple[InFlight, Prepared]]) -> None:
        predictor = self.predictor(model)
        predict = [(i, p) for i, p in group if i.job["kind"] == "predict"]
        preds: list[Any] = []
        if predict:
            for item, _ in predict:
                self._stage(item, "inference", 0.6)
            self.metrics.batch_size.observe(len(predict))
            t0 = time.perf_counter()
            batch = torch.from_numpy(np.concatenate([p.tensor for _, p in predict], axis=0))
            with torch.inference_mode():
                preds = predictor.predict(batch)
            dt = (time.perf_counter() - t0) / len(predict)
            for item, _ in predict:
                item.timings["inference"] = dt
        by_job = {i.job_id: pred for (i, _), pred in zip(predict, preds, strict=True)}
        for item, prep in group:
            with logger.contextualize(job_id=str(item.job_id), attempt=item.attempt):
                try:
                    self._finish_one(predictor, item, prep, by_job.get(item.job_id))
                except Exception as e:
                    self._fail_or_release(item, e)

    def _finish_one(self, predictor: Predictor, item: InFlight, prep: Prepared, pred: Any) -> None:
        job = item.job
        explanation: dict[str, Any] | None = None
        if job["explain"] != "none":
            self._stage(item, "explaining", 0.7)
            t0 = time.perf_counter()
            explanation = self._explain(predictor, item, prep)
            item.timings["explaining"] = time.perf_counter() - t0
        self._stage(item, "saving", 0.9)
        t0 = time.perf_counter()
        if explanation is not None:
            self._upload(explanation)
        item.timings["saving"] = time.perf_counter() - t0
        item.timings["total"] = time.perf_counter() - item.t_claimed
        body = (
            build_result(item.job_id, item.attempt, predictor.entry, pred, prep, item.timings)
            if pred is not None
            else None
        )
        try:
            with self.db.tx() as conn:
                row = finish_job(conn, item.job_id, item.attempt, timings=item.timings)
                if row is None:
                    raise _StaleAttemptError
                if body is not None:
                    insert_result(conn, item.job_id, item.attempt, body)
                if explanation is not None:
                    target = job["parent_job_id"] if job["kind"] == "explain" else item.job_id
                    upsert_explanation(
                        conn,
                        job_id=target,
                        method=job["explain"],
                        produced_by=item.job_id,
                        attempt=item.attempt,
                        params=explanation["params"],
                        stats=explanation["stats"],
                        geometry=explanation["geometry"],
                        blobs={
                            k: {"key": v[0], "content_type": v[2]} for k, v in explanation["files"].items()
                        },
                        model_name=predictor.entry.name,
                        model_version=predictor.entry.version,
                    )
                self._outbox(conn, row, "succeeded", body)
        except _StaleAttemptError:
            logger.warning("job {} attempt {} lost its lease; result dropped", item.job_id, item.attempt)
            self.metrics.job_finished("stale")
        else:
            self.processed += 1
            self.metrics.job_finished("succeeded", None, item.timings)
            logger.info(
                "job {} succeeded in {:.2f} s{}",
                item.job_id,
                item.timings["total"],
                f" (p={body['probability']:.3f})" if body else "",
            )
        self._done(item)

    def _explain(self, predictor: Predictor, item: InFlight, prep: Prepared) -> dict[str, Any]:
        """Saliency in the source geometry, written to local files (uploaded by :meth:`_upload`)."""
        from ml.explain.files import write_saliency
        from ml.explain.methods import explain
        from ml.explain.source_grid import to_source

        job = item.job
        tensor = torch.from_numpy(prep.tensor)
        out = explain(predictor, tensor, job["explain"], job["explain_params"])
        source_map = to_source(out, prep.geometry)
        files = write_saliency(
            source_map,
            prep.geometry.source,
            prep.volume,  # the stored volume: only the slices drawn are converted to HU
            item.workdir / "saliency",
            method=out.method,
            params=out.params,
            nifti_mantissa_bits=10,  # float32 with 10 mantissa bits: ~45 % smaller, rel. error < 0.05 %
        )
        prefix = f"jobs/{item.job_id}/attempt-{item.attempt}/saliency/{job['explain']}"
        return {
            "stats": files.stats,
            "params": out.params,
            "geometry": _viewer_geometry(prep),
            "files": {
                name: (f"{prefix}/{path.name}", path, ctype) for name, (path, ctype) in files.named().items()
            },
        }

    def _upload(self, explanation: dict[str, Any]) -> None:
        for key, path, ctype in explanation["files"].values():
            self._storage_retry(
                "write the saliency", functools.partial(self.storage.put_file, key, path, ctype)
            )

    def _storage_retry(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while the object store is unreachable.

        After ``storage_retry_s`` the job fails with ``storage_unavailable`` (its attempt is
        kept: an outage does not use up ``max_attempts``); a missing object is not retried,
        and a worker that is stopping gives the attempt back instead of waiting.
        """
        deadline = time.monotonic() + self.s.storage_retry_s
        delay = 0.5
        while True:
            try:
                return call()
            except ObjectNotFoundError:
                raise
            except StorageError as e:
                left = deadline - time.monotonic()
                if self.stop_event.is_set():
                    raise
                if left <= 0:
                    raise JobRefusedError(
                        "storage_unavailable",
                        f"could not {what}: the object store stayed unreachable for "
                        f"{self.s.storage_retry_s:.0f} s ({e.code})",
                    ) from e
                logger.warning("object store unreachable ({}): {} retried in {:.1f} s", e.code, what, delay)
                self.stop_event.wait(min(delay, left))
                delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------------ outcomes
    def _stage(self, item: InFlight, stage: str, progress: float) -> None:
        with self.db.conn() as conn:
            set_stage(conn, item.job_id, item.attempt, stage, progress)

    def _outbox(self, conn: Any, row: dict[str, Any], state: str, body: dict[str, Any] | None = None) -> None:
        if row.get("callback_url"):
            outbox_add(
                conn,
                row["id"],
                row["client"],
                row["callback_url"],
                f"job.{state}",
                job_event(conn, row["id"]),
            )

    def _fail_or_release(self, item: InFlight, err: BaseException) -> None:
        """Record a refusal (failed with its code) or give the attempt back; the item is done.

        Never raises: when the outcome cannot be written (PostgreSQL down), the job is dropped
        from this worker, its lease expires and the reconciler queues it again.
        """
        try:
            self._record_failure(item, err)
        except Exception as e:
            logger.warning(
                "job {} attempt {}: outcome not recorded ({}); the lease expires and the job is requeued",
                item.job_id,
                item.attempt,
                type(e).__name__,
            )
        finally:
            self._done(item)

    def _record_failure(self, item: InFlight, err: BaseException) -> None:
        code = getattr(err, "code", None)
        if isinstance(err, InputError | ModelUnavailable | JobRefusedError) and code:
            detail = scrubber.scrub(str(getattr(err, "detail", "")))[:500]
            with self.db.tx() as conn:
                row = finish_job(
                    conn,
                    item.job_id,
                    item.attempt,
                    timings=item.timings,
                    error_code=code,
                    error_detail=detail,
                )
                if row is not None:
                    self._outbox(conn, row, "failed")
            logger.info("job {} failed: {}", item.job_id, code)
            self.processed += 1
            total = time.perf_counter() - item.t_claimed
            self.metrics.job_finished(
                "failed" if row is not None else "stale", code, {**item.timings, "total": total}
            )
        else:
            stopping = (
                self.stop_event.is_set()
            )  # e.g. preprocessing cancelled by the stop: not the job's fault
            if not stopping:
                logger.opt(exception=err).error(
                    "job {} attempt {}: unexpected error", item.job_id, item.attempt
                )
            self._release(item, f"{type(err).__name__}", spend=not stopping)

    def _release(self, item: InFlight, detail: str, *, spend: bool = True) -> None:
        """Give the attempt back (``spend=False``: a graceful stop, not charged to the job)."""
        with self.db.tx() as conn:
            state = release_job(conn, item.job_id, item.attempt, f"unexpected error ({detail})", spend=spend)
            if state == "failed":
                row = get_job(conn, item.job_id)
                if row is not None:
                    self._outbox(conn, row, "failed")
        if state == "queued":
            with contextlib.suppress(Exception):
                self.jobs.enqueue([item.job_id])
        outcome = {"queued": "released", "failed": "failed"}.get(state or "", "stale")
        self.metrics.job_finished(outcome, "internal_error" if state == "failed" else None)

    def _done(self, item: InFlight) -> None:
        with contextlib.suppress(Exception):
            self.jobs.ack(item.message.entry_id)
        with self._held_lock:
            self.held.pop(item.job_id, None)
        shutil.rmtree(item.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ housekeeping
    def _beat(self) -> None:
        with self._held_lock:
            held = [(i.job_id, i.attempt) for i in self.held.values()]
        with self.db.conn() as conn:
            still = extend_leases(conn, held, self.s.lease_s)
            worker_seen(conn, self.id, {"held": len(held), "processed": self.processed, "pid": os.getpid()})
        lost = {j for j, _ in held} - still
        for j in lost:
            logger.warning("job {}: lease lost (another attempt took it over)", j)

    def _drain_progress(self) -> None:
        while True:
            try:
                job_id, attempt, stage, progress = self.progress.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            with self.db.conn() as conn:
                set_stage(conn, uuid.UUID(job_id), attempt, stage, progress)

    def reconcile(self) -> dict[str, int]:
        """Repair the queue from PostgreSQL (DESIGN rule 1); returns counts of what was done."""
        with self.db.tx() as conn:
            failed = fail_exhausted(conn)
            for row in failed:
                self._outbox(conn, row, "failed")
            requeued = requeue_expired(conn)
            stale = queued_before(conn, max(self.s.reconcile_s, 5.0))
            purge_idempotency(conn, self.s.idempotency_ttl_s)
        lost = self.jobs.reconcile(stale)
        self.jobs.enqueue(requeued)
        if lost:
            with self.db.conn() as conn:
                mark_enqueued(conn, lost)
            logger.warning("reconciler: re-enqueued {} queued job(s) missing from the stream", len(lost))
        counts = {"failed": len(failed), "requeued": len(requeued), "lost": len(lost)}
        for action, n in counts.items():
            if n:
                self.metrics.reconciled.labels(action).inc(n)
        return counts

    def _housekeeping_loop(self) -> None:
        # A stopping worker keeps extending the leases of the jobs it drains (else another
        # worker takes them over and the drained results are dropped); it no longer reconciles.
        last_beat = time.monotonic()
        while not self._drained.is_set():
            self._drained.wait(0.2)
            try:
                self._drain_progress()
                now = time.monotonic()
                if now - last_beat >= self.s.heartbeat_s:
                    last_beat = now
                    self._beat()
                if not self.stop_event.is_set() and now - self._last_reconcile >= self.s.reconcile_s:
                    self._last_reconcile = now
                    self.reconcile()
            except Exception:
                logger.exception("housekeeping error")

    def _janitor_loop(self) -> None:
        """Abort multipart uploads abandoned for ``upload_abandon_s`` (an API killed mid-upload, or
        an abort that could not reach S3). Its own thread: a hung object store must not delay
        the heartbeats."""
        period = min(self.s.upload_abandon_s / 4, 900.0)
        while not self.stop_event.wait(period):
            try:
                aborted = self.storage.abort_incomplete_uploads("", older_than_s=self.s.upload_abandon_s)
            except StorageError as e:
                logger.warning("janitor: listing incomplete uploads failed ({})", e.code)
                continue
            if aborted:
                logger.warning("janitor: aborted {} abandoned multipart upload(s)", aborted)


class _MeteredDispatcher(WebhookDispatcher):
    """The webhook dispatcher, counting failed delivery attempts in the worker's metrics."""

    def __init__(self, db: Database, settings: Settings, metrics: WorkerMetrics) -> None:
        super().__init__(db, settings)
        self.metrics = metrics

    def _deliver(self, row: dict[str, Any]) -> None:
        before = self.delivered
        try:
            super()._deliver(row)
        finally:
            if self.delivered == before:
                self.metrics.webhook_failures.inc()


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


def _viewer_geometry(prep: Prepared) -> dict[str, Any]:
    """What a viewer needs to place the saliency on the source series (LPS, mm)."""
    g = prep.geometry.source
    d = g.to_dict()
    d.update(
        {
            "frame": "LPS",
            "series_uid": prep.qc["selected_series_uid"],
            "shape_zyx": list(g.shape_zyx),
            "nifti_axes": "i, j, k = column, row, slice (affine in RAS)",
            "affine_ras": np.asarray(g.affine_ras(), dtype=float).round(6).tolist(),
        }
    )
    return d


class JobRefusedError(Exception):
    """A refusal found by the worker itself (not by ``ml/``), with a stable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


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
