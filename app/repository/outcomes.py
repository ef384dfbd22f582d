"""What becomes of a job's attempt, each outcome one transaction with its webhook.

A job's events (``job.started``, ``job.<final state>``, ``explanation.succeeded``) are
queued in the outbox (:func:`app.repository.events.emit`) inside the transaction that
makes the change, so they are never lost nor sent for an uncommitted result. Every function opens its own
transaction on ``conn`` (a savepoint when the caller already holds one). Writes are
guarded by the attempt: a stale attempt changes nothing and is told so.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.db import Conn
from app.repository.dicom import DicomOutputs, insert_dicom_outputs, queue_push
from app.repository.events import emit
from app.repository.idempotency import purge_idempotency
from app.repository.jobs import (
    cancel_job,
    claim_job,
    fail_exhausted,
    finish_job,
    get_job,
    promote_aged,
    queued_before,
    release_job,
    requeue_expired,
    urgent_among,
)
from app.repository.records import ExplanationRecord, Job, JobLinks
from app.repository.results import get_result, insert_result, upsert_explanation
from app.schemas import JobResult

__all__ = [
    "Reconciled",
    "cancel",
    "claim_attempt",
    "job_event",
    "mark_failed",
    "mark_succeeded",
    "reconcile_jobs",
    "release_attempt",
]


def job_event(conn: Conn, job_id: uuid.UUID) -> dict[str, Any]:
    """The webhook payload of a finished job (:meth:`Job.event_view`)."""
    job = get_job(conn, job_id)
    if job is None:
        return {"job_id": str(job_id)}
    return job.event_view(get_result(conn, job_id) if job.state == "succeeded" else None)


def _notify(conn: Conn, job: Job) -> None:
    """Queue the ``job.<state>`` event of a job that just finished or started."""
    event = "job.started" if job.state == "running" else f"job.{job.state}"
    payload = functools.partial(job_event, conn, job.id)  # read only when the event is selected
    emit(conn, job.client, event, payload, callback_url=job.callback_url, job_id=job.id)


def _notify_explanation(conn: Conn, job: Job, explanation: ExplanationRecord) -> None:
    """Queue ``explanation.succeeded`` for an explanation ``job`` just stored."""
    links = JobLinks.of(explanation.job_id)
    payload = {
        "job_id": str(explanation.job_id),
        "produced_by": str(explanation.produced_by),
        "method": explanation.method,
        "explanation_url": links.explanation,
        "status_url": links.status,
        "client_ref": job.client_ref,
        "metadata": job.metadata,
    }
    emit(conn, job.client, "explanation.succeeded", payload, callback_url=job.callback_url, job_id=job.id)


def claim_attempt(conn: Conn, job_id: uuid.UUID, worker_id: str, lease_s: float) -> Job | None:
    """The job claimed for a new attempt (:func:`claim_job`), or None.

    The claim queues ``job.started`` (every attempt: ``attempt`` tells which). A job that
    cannot be claimed because its lease expired with no attempts left fails with
    ``worker_crashed`` here (and its callback is queued).
    """
    with conn.transaction():
        job = claim_job(conn, job_id, worker_id, lease_s)
        if job is None:
            for failed in fail_exhausted(conn, job_id):
                _notify(conn, failed)
        else:
            _notify(conn, job)
    return job


def mark_succeeded(
    conn: Conn,
    claimed: Job,
    timings: Mapping[str, float],
    result: JobResult | None,
    explanation: ExplanationRecord | None,
    dicom: DicomOutputs | None = None,
) -> bool:
    """Finish the attempt ``claimed`` holds with its result and explanation rows; False if no longer held.

    ``dicom``: its DICOM results; written ones are queued for the client's DICOMweb destination.
    """
    with conn.transaction():
        job = finish_job(conn, claimed.id, claimed.attempt, timings=timings)
        if job is None:
            return False
        if result is not None:
            insert_result(conn, result)
        if dicom is not None:
            insert_dicom_outputs(conn, dicom)
            if dicom.objects:
                queue_push(conn, job.id, job.client, [o.key for o in dicom.objects])
        _notify(conn, job)
        if explanation is not None:
            upsert_explanation(conn, explanation)
            _notify_explanation(conn, job, explanation)
    return True


def mark_failed(conn: Conn, claimed: Job, timings: Mapping[str, float], code: str, detail: str) -> bool:
    """Fail the attempt ``claimed`` holds with a stable error code; False if no longer held."""
    with conn.transaction():
        job = finish_job(
            conn, claimed.id, claimed.attempt, timings=timings, error_code=code, error_detail=detail
        )
        if job is not None:
            _notify(conn, job)
    return job is not None


def release_attempt(conn: Conn, claimed: Job, detail: str, *, spend: bool = True) -> str | None:
    """Give the attempt ``claimed`` holds back (:func:`release_job`): ``"queued"``, ``"failed"`` or None.

    None: the attempt was no longer held. A job failed because its attempts ran out
    (``internal_error``) gets its callback.
    """
    with conn.transaction():
        state = release_job(conn, claimed.id, claimed.attempt, detail, spend=spend)
        if state == "failed":
            job = get_job(conn, claimed.id)
            if job is not None:
                _notify(conn, job)
    return state


def cancel(conn: Conn, job_id: uuid.UUID, client: str) -> Job | None:
    """Cancel a queued or running job (:func:`cancel_job`) and queue its ``job.cancelled`` callback.

    None: the job is not ``client``'s, or it is already finished or cancelled.
    """
    with conn.transaction():
        job = cancel_job(conn, job_id, client)
        if job is not None:
            _notify(conn, job)
    return job


@dataclass(frozen=True)
class Reconciled:
    """What :func:`reconcile_jobs` did: jobs failed, requeued and promoted, and queued jobs to check in
    Redis; ``urgent``: which of them belong to the urgent lane."""

    failed: int
    requeued: list[uuid.UUID]
    stale: list[uuid.UUID]
    promoted: list[uuid.UUID] = field(default_factory=list)
    urgent: set[uuid.UUID] = field(default_factory=set)


def reconcile_jobs(
    conn: Conn, *, stale_after_s: float, idempotency_ttl_s: float, priority_age_s: float | None = None
) -> Reconciled:
    """The reconciler's transaction.

    Fails expired jobs without attempts left (``worker_crashed``), requeues expired ones
    with attempts left, promotes routine jobs queued longer than ``priority_age_s`` to the
    urgent lane, lists jobs queued for more than ``stale_after_s`` (their ids may be
    missing from Redis) and purges idempotency keys older than ``idempotency_ttl_s``.
    """
    with conn.transaction():
        failed = fail_exhausted(conn)
        for job in failed:
            _notify(conn, job)
        requeued = requeue_expired(conn)
        promoted = promote_aged(conn, priority_age_s) if priority_age_s is not None else []
        stale = queued_before(conn, stale_after_s)
        urgent = urgent_among(conn, [*requeued, *stale])
        purge_idempotency(conn, idempotency_ttl_s)
    return Reconciled(
        failed=len(failed), requeued=requeued, stale=stale, promoted=promoted, urgent=urgent | set(promoted)
    )
