"""Typed records read from the database, with their links and the views the API and webhooks serve.

The repository builds them from rows (:meth:`Job.from_row`); the routes, the worker and
the webhooks read attributes. A job's URLs are built here only (:class:`JobLinks`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from app.schemas import Explanation, JobAccepted, JobResult, JobState, Stage

__all__ = ["BlobRef", "Delivery", "ExplanationRecord", "Job", "JobKind", "JobLinks", "RecentStats", "Row"]

#: a row as psycopg returns it (column name → value), for queries without a record
Row = dict[str, Any]
#: a predict job computes a result (and an explanation); an explain job explains its predicted parent
JobKind = Literal["predict", "explain"]

_FINISHED = ("succeeded", "failed", "cancelled")


def _from_row(cls: type[Any], row: Mapping[str, Any]) -> Any:
    """An instance of the dataclass ``cls`` from the row's columns of the same names."""
    return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


def _iso_z(v: dt.datetime | None) -> str | None:
    return None if v is None else v.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class JobLinks:
    """The API paths of one job."""

    status: str
    result: str
    explanation: str

    @classmethod
    def of(cls, job_id: uuid.UUID | str) -> JobLinks:
        base = f"/v1/jobs/{job_id}"
        return cls(status=base, result=f"{base}/result", explanation=f"{base}/explanation")

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "result": self.result, "explanation": self.explanation}


@dataclass(frozen=True, slots=True)
class RecentStats:
    """Mean run seconds of recent succeeded jobs (None without any) and the number of live workers."""

    run_s: float | None
    samples: int
    workers: int


@dataclass(frozen=True, slots=True)
class Job:
    """One row of ``jobs``.

    ``study_s3_key`` is read by :func:`app.repository.get_job` and :func:`app.repository.claim_job`
    (None once the study was deleted); ``queue_position`` and ``label`` by
    :func:`app.repository.job_with_position` and :func:`app.repository.list_jobs` (None unless
    queued; None without a result).
    """

    id: uuid.UUID
    client: str
    study_id: uuid.UUID | None
    study_sha256: str
    kind: JobKind
    parent_job_id: uuid.UUID | None
    model: str
    series_uid: str | None
    explain: str
    explain_params: dict[str, Any]
    callback_url: str | None
    state: JobState
    stage: Stage | None
    progress: float
    attempt: int
    max_attempts: int
    worker_id: str | None
    lease_until: dt.datetime | None
    heartbeat_at: dt.datetime | None
    enqueued_at: dt.datetime
    error_code: str | None
    error_detail: str | None
    stage_timings: dict[str, float]
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    study_s3_key: str | None = None
    queue_position: int | None = None
    priority: Literal["urgent", "routine"] = "routine"
    client_ref: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    promoted_at: dt.datetime | None = None
    cancelled_at: dt.datetime | None = None
    #: the result's label (read by the queries that join ``results``)
    label: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        job: Job = _from_row(cls, row)
        return job

    @property
    def links(self) -> JobLinks:
        return JobLinks.of(self.id)

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    @property
    def urgent(self) -> bool:
        """Claimed before routine jobs: asked urgent, or promoted after waiting ``priority_age_s``."""
        return self.priority == "urgent" or self.promoted_at is not None

    @property
    def explanation_target(self) -> uuid.UUID:
        """The predicted job an explanation made by this job belongs to."""
        return self.parent_job_id if self.kind == "explain" and self.parent_job_id else self.id

    @property
    def error(self) -> dict[str, str | None] | None:
        return {"code": self.error_code, "detail": self.error_detail} if self.error_code else None

    def eta_s(self, stats: RecentStats) -> float | None:
        """Estimated seconds to completion: 0 once finished, None without recent timings."""
        if self.finished:
            return 0.0
        run_s = stats.run_s
        if run_s is None:
            return None
        workers = max(1, stats.workers)
        if self.state == "queued":
            return round(run_s * (1 + (self.queue_position or 0) / workers), 2)
        started = self.started_at
        elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds() if started else 0.0
        return round(max(run_s - elapsed, run_s * (1.0 - float(self.progress)) * 0.1), 2)

    def accepted_view(self) -> dict[str, Any]:
        """The ``202`` body of the route that created the job (:class:`app.schemas.JobAccepted`)."""
        links = self.links
        return JobAccepted(
            job_id=self.id, state=self.state, status_url=links.status, links=links.as_dict()
        ).model_dump(mode="json")

    def status_view(self, stats: RecentStats) -> dict[str, Any]:
        """The :class:`app.schemas.JobStatus` body, built directly (the hottest route: no model round trip).

        Needs ``queue_position`` (:func:`app.repository.job_with_position`); the shape is
        checked against the schema by the tests.
        """
        return {
            "job_id": str(self.id),
            "study_id": str(self.study_id) if self.study_id else None,
            "kind": self.kind,
            "parent_job_id": str(self.parent_job_id) if self.parent_job_id else None,
            "state": self.state,
            "stage": self.stage,
            "progress": float(self.progress),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "queue_position": self.queue_position,
            "eta_s": self.eta_s(stats),
            "model": self.model,
            "explain": self.explain,
            "error": self.error,
            "created_at": _iso_z(self.created_at),
            "started_at": _iso_z(self.started_at),
            "finished_at": _iso_z(self.finished_at),
            "updated_at": _iso_z(self.updated_at),
            "stage_timings": self.stage_timings,
            "links": self.links.as_dict(),
            "priority": self.priority,
            "label": self.label,
            "client_ref": self.client_ref,
            "metadata": self.metadata,
            "feedback": None,  # the routes that read it fill it in (app.api.routes.jobs.with_feedback)
        }

    def event_view(self, result: JobResult | None) -> dict[str, Any]:
        """The webhook payload (ids, state, error, result summary; never PHI)."""
        links = self.links
        event: dict[str, Any] = {
            "event": f"job.{self.state}",
            "job_id": str(self.id),
            "kind": self.kind,
            "parent_job_id": str(self.parent_job_id) if self.parent_job_id else None,
            "study_id": str(self.study_id) if self.study_id else None,
            "state": self.state,
            "attempt": self.attempt,
            "error": self.error,
            "status_url": links.status,
            "result_url": links.result if self.kind == "predict" else None,
            "explanation_url": JobLinks.of(self.parent_job_id or self.id).explanation,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "client_ref": self.client_ref,
            "metadata": self.metadata,
        }
        if result is not None:
            event["probability"] = result.probability
            event["label"] = result.label
            event["indeterminate_reasons"] = list(result.indeterminate_reasons)
        return event


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A file of an explanation in the object store."""

    key: str
    content_type: str


@dataclass(frozen=True, slots=True)
class ExplanationRecord:
    """One row of ``explanations``: the saliency of predicted job ``job_id`` by ``method``.

    ``produced_by`` is the job (and ``attempt``) that computed it: the predict job itself
    or one of its explain jobs. ``created_at`` is None until the row is stored.
    """

    job_id: uuid.UUID
    method: str
    produced_by: uuid.UUID
    attempt: int
    params: dict[str, Any]
    stats: dict[str, Any]
    geometry: dict[str, Any]
    blobs: dict[str, BlobRef]
    model_name: str
    model_version: str
    created_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ExplanationRecord:
        blobs = {name: BlobRef(b["key"], b["content_type"]) for name, b in row["blobs"].items()}
        record: ExplanationRecord = _from_row(cls, {**row, "blobs": blobs})
        return record

    def blobs_json(self) -> dict[str, dict[str, str]]:
        return {name: {"key": b.key, "content_type": b.content_type} for name, b in self.blobs.items()}

    def view(self, presign: Callable[[str], str], expires_at: dt.datetime) -> dict[str, Any]:
        """The :class:`app.schemas.Explanation` body, files as URLs from ``presign(key)``."""
        files = {
            name: {"url": presign(b.key), "content_type": b.content_type, "expires_at": expires_at}
            for name, b in self.blobs.items()
        }
        return Explanation(
            job_id=self.job_id,
            method=self.method,
            params=self.params,
            stats=self.stats,
            geometry=self.geometry,
            model={"name": self.model_name, "version": self.model_version},
            files=files,
            created_at=self.created_at,
        ).model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class Delivery:
    """A due webhook of the outbox, leased to one dispatcher."""

    id: int
    job_id: uuid.UUID | None
    client: str
    url: str
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Delivery:
        delivery: Delivery = _from_row(cls, row)
        return delivery
