"""Jobs: create (predict), list, status with queue position and ETA, cancel, delete, result."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from app.api.audit import AuditDep
from app.api.checks import check_explain_cost, checked_callback_url
from app.api.deps import Client, Services, ServicesDep
from app.api.idempotency import IdemKey, body_hash, run_idempotent
from app.api.paging import ClientRefQ, CreatedAfter, CreatedBefore, Cursor, Limit, utc
from app.api.responses import error_responses
from app.db import Conn
from app.errors import ServiceError
from app.logs import logger
from app.quotas import check_queued_jobs
from app.repository import (
    Job,
    JobFilter,
    RecentStats,
    cancel,
    get_job,
    get_result,
    get_study,
    insert_job,
    job_with_position,
    list_jobs,
    recent_stats,
    study_series,
)
from app.repository.feedback import current_feedback
from app.repository.retention import remove_job
from app.retention import sweep_after_s, sweep_now
from app.schemas import (
    JobAccepted,
    JobCreate,
    JobResult,
    JobState,
    JobStatus,
    Label,
    PredictRequest,
    Priority,
    check_explain_params,
)
from app.schemas_feedback import GroundTruth, JobFeedback
from app.schemas_worklist import JobPage

router = APIRouter(prefix="/v1", tags=["jobs"])

_STATS_TTL_S = 5.0
_stats_cache: dict[int, tuple[float, RecentStats]] = {}
_stats_lock = threading.Lock()


def enqueue_job(services: Services, job_id: uuid.UUID, urgent: bool) -> None:
    """XADD after the row committed; if Redis is down the reconciler enqueues it later."""
    try:
        services.queue.enqueue([job_id], urgent=urgent)
    except Exception as e:
        logger.warning(
            "job {} committed but not enqueued ({}); the reconciler will", job_id, type(e).__name__
        )


def _check_model(services: Services, name: str | None) -> str:
    """The model a job uses: known to the manifest and servable (its weights are there and hash right)."""
    model = name or services.manifest.default
    if model not in services.manifest.entries:
        raise ServiceError(
            "model_unavailable",
            f"unknown model {model!r}; see GET /v1/models",
            http_status=422,
        )
    shadow_of = services.manifest.entries[model].shadow_of
    if shadow_of is not None:
        raise ServiceError(
            "model_is_shadow", f"model {model!r} is a shadow of {shadow_of!r}; ask for that one"
        )
    reason = services.models.reason(model)
    if reason is not None:
        raise ServiceError(
            "model_unavailable", f"model {model!r} cannot be served: {reason}", http_status=422
        )
    return model


def checked_options(services: Services, req: PredictRequest) -> tuple[str, dict[str, Any]]:
    """The model name and explanation parameters of a prediction request, checked."""
    model = _check_model(services, req.model)
    try:
        params = check_explain_params(req.explain, req.explain_params)
    except ValueError as e:
        raise ServiceError("validation_error", str(e)) from None
    check_explain_cost(services, model, req.explain, params)
    return model, params


def job_fields(
    services: Services, req: PredictRequest, model: str, params: dict[str, Any], callback_url: str | None
) -> dict[str, Any]:
    """The :func:`~app.repository.insert_job` fields a prediction request decides: model,
    explanation, callback, attempts, priority and the client's references."""
    return {
        "model": model,
        "explain": req.explain,
        "explain_params": params,
        "callback_url": callback_url,
        "max_attempts": services.settings.max_attempts,
        "priority": req.priority,
        "client_ref": req.client_ref,
        "metadata": req.metadata,
    }


def _create_job(
    services: Services,
    client: str,
    study_id: uuid.UUID,
    req: PredictRequest,
    idem_key: str | None,
    route: str,
) -> JSONResponse:
    model, params = checked_options(services, req)
    callback_url = checked_callback_url(services, req.callback_url)
    payload = req.model_dump(mode="json") | {"study_id": str(study_id)}

    def create(conn: Conn) -> tuple[int, dict[str, Any]]:
        study = get_study(conn, client, study_id)
        if study is None:
            raise ServiceError("study_not_found")
        check_queued_jobs(conn, client, services.settings)  # 429 quota_exceeded when full
        if req.series_uid is not None:
            _check_series(conn, client, study_id, req.series_uid)
        job = insert_job(
            conn,
            client=client,
            study=study,
            series_uid=req.series_uid,
            **job_fields(services, req, model, params, callback_url),
        )
        return 202, job.accepted_view()

    status, body, replayed = run_idempotent(services.db, client, idem_key, route, body_hash(payload), create)
    if not replayed:
        enqueue_job(services, uuid.UUID(body["job_id"]), req.priority == "urgent")
        logger.info("job {} queued for study {}", body["job_id"], study_id)
    return JSONResponse(body, status_code=status, headers={"Location": body["status_url"]})


def _check_series(conn: Conn, client: str, study_id: uuid.UUID, series_uid: str) -> None:
    """Refuse an unknown or unusable ``series_uid`` now when the study's series were scanned already."""
    _, picker = study_series(conn, client, study_id)
    if picker is None or "series" not in picker:
        return  # not scanned: the worker checks it
    found = next((s for s in picker["series"] if s["series_uid"] == series_uid), None)
    if found is None:
        raise ServiceError(
            "series_not_found", "the series_uid is not in the study; see GET /v1/studies/{id}/series"
        )
    rejects = [r for r in found["reasons"] if r["severity"] == "reject"]
    if rejects:
        raise ServiceError(rejects[0]["code"], f"the requested series is unusable: {rejects[0]['detail']}")


_CREATE_ERRORS = error_responses(
    "unauthorized",
    "quota_exceeded",
    "study_not_found",
    "model_unavailable",
    "callback_url_invalid",
    "explain_too_costly",
    "series_not_found",
    "idempotency_conflict",
    "idempotency_in_progress",
)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    summary="Queue a prediction of a study",
    responses=_CREATE_ERRORS,
)
def create_job(req: JobCreate, services: ServicesDep, client: Client, idempotency_key: IdemKey = None) -> Any:
    return _create_job(
        services,
        client,
        req.study_id,
        PredictRequest(**req.model_dump(exclude={"study_id"})),
        idempotency_key,
        "POST /v1/jobs",
    )


@router.post(
    "/studies/{study_id}/predict",
    status_code=202,
    response_model=JobAccepted,
    summary="Queue a prediction of a study (shorthand of POST /v1/jobs)",
    tags=["studies"],
    responses=_CREATE_ERRORS,
)
def predict_study(
    study_id: uuid.UUID,
    services: ServicesDep,
    client: Client,
    req: PredictRequest | None = None,
    idempotency_key: IdemKey = None,
) -> Any:
    return _create_job(services, client, study_id, req or PredictRequest(), idempotency_key, "POST /v1/jobs")


def job_or_404(conn: Conn, job_id: uuid.UUID, client: str) -> Job:
    job = get_job(conn, job_id, client)
    if job is None:
        raise ServiceError("job_not_found")
    return job


def _recent(conn: Conn) -> RecentStats:
    now = time.monotonic()
    with _stats_lock:
        hit = _stats_cache.get(0)
    if hit is not None and now - hit[0] < _STATS_TTL_S:
        return hit[1]
    stats = recent_stats(conn)
    with _stats_lock:
        _stats_cache[0] = (now, stats)
    return stats


@router.get(
    "/jobs",
    response_model=JobPage,
    summary="The caller's jobs, newest first, filtered and paged (keyset cursor)",
    responses=error_responses("unauthorized"),
)
def list_jobs_route(
    services: ServicesDep,
    client: Client,
    state: Annotated[
        list[JobState] | None, Query(description="one or more states (repeat the parameter)")
    ] = None,
    study_id: uuid.UUID | None = None,
    client_ref: ClientRefQ = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    label: Annotated[Label | None, Query(description="the result's label (succeeded predictions)")] = None,
    priority: Priority | None = None,
    feedback: Annotated[
        Literal["any", "none"] | None, Query(description="`any`: jobs with feedback; `none`: without")
    ] = None,
    ground_truth: Annotated[
        GroundTruth | None, Query(description="the ground truth of the readers' current answers")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """A page of ``JobStatus`` items; a page starts strictly after the cursor, so jobs created while a
    client pages never shift the later pages (they appear on a new first page)."""
    f = JobFilter(
        client_ref=client_ref,
        created_after=utc(created_after),
        created_before=utc(created_before),
        states=tuple(state or ()),
        study_id=study_id,
        label=label,
        priority=priority,
        feedback=feedback,
        ground_truth=ground_truth,
    )
    with services.db.conn() as conn:
        try:
            page = list_jobs(conn, client, f, limit, cursor)
        except ValueError as e:
            raise ServiceError("validation_error", str(e)) from None
        stats = _recent(conn) if page.items else None
        answers = current_feedback(conn, [job.id for job in page.items])
    items = [with_feedback(job, stats, answers) for job in page.items] if stats is not None else []
    return Response(
        orjson.dumps({"items": items, "next_cursor": page.next_cursor}), media_type="application/json"
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="Job state, stage, progress, attempt, queue position and ETA",
    responses=error_responses("unauthorized", "job_not_found"),
)
def read_job(job_id: uuid.UUID, services: ServicesDep, client: Client) -> Response:
    with services.db.conn() as conn:
        job = job_with_position(conn, job_id, client)
        if job is None:
            raise ServiceError("job_not_found")
        stats = _recent(conn)
        answers = current_feedback(conn, [job.id])
    return Response(orjson.dumps(with_feedback(job, stats, answers)), media_type="application/json")


#: what a route that needs a succeeded job may answer
NEEDS_SUCCEEDED = ("unauthorized", "job_not_found", "job_not_finished", "job_failed", "job_cancelled")


def with_feedback(job: Job, stats: RecentStats, answers: dict[uuid.UUID, JobFeedback]) -> dict[str, Any]:
    """The job's status body with its current feedback (``answers``: :func:`current_feedback`)."""
    found = answers.get(job.id)
    return job.status_view(stats) | {"feedback": None if found is None else found.model_dump(mode="json")}


def require_succeeded(job: Job) -> None:
    if job.state == "cancelled":
        raise ServiceError("job_cancelled")
    if job.state == "failed":
        raise ServiceError("job_failed", f"the job failed with {job.error_code}")
    if job.state != "succeeded":
        raise ServiceError("job_not_finished", f"the job is {job.state}; poll GET {job.links.status}")


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobStatus,
    summary="Cancel a queued or running job (state cancelled; idempotent)",
    responses=error_responses("unauthorized", "job_not_found", "job_finished"),
)
def cancel_job_route(job_id: uuid.UUID, services: ServicesDep, client: Client) -> Response:
    """A queued job never runs; a running one stops at its next stage boundary and nothing more is
    stored for it. Cancelling a cancelled job answers its status again; a finished one is 409
    ``job_finished``."""
    with services.db.conn() as conn:
        done = cancel(conn, job_id, client)
        job = job_with_position(conn, job_id, client)
        if job is None:
            raise ServiceError("job_not_found")
        if done is None and job.state != "cancelled":
            raise ServiceError("job_finished", f"the job already {job.state}")
        stats = _recent(conn)
    if done is not None:
        logger.info("job {} cancelled", job_id)
    return Response(orjson.dumps(job.status_view(stats)), media_type="application/json")


def succeeded_prediction(conn: Conn, job_id: uuid.UUID, client: str) -> Job:
    """The client's predict job ``job_id``, succeeded (else the error answer that says why not)."""
    job = job_or_404(conn, job_id, client)
    if job.kind != "predict":
        raise ServiceError("job_not_found", "explain jobs have no result; see the parent's explanation")
    require_succeeded(job)
    return job


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Delete a finished job: its result, explanations, explain jobs and every file",
    responses=error_responses("unauthorized", "job_not_found", "job_active"),
)
def delete_job_route(job_id: uuid.UUID, services: ServicesDep, audit: AuditDep) -> Response:
    """A queued or running job is refused with 409 ``job_active``: cancel it first (``POST
    /v1/jobs/{id}/cancel``). Deleting a predict job deletes its explain jobs too (a running one
    stops: nothing it stores afterwards is kept); its study stays."""
    with services.db.tx() as conn:
        done = remove_job(conn, audit.client, job_id, sweep_after_s(services.settings))
        if done not in (None, "active"):
            audit.record(conn, "delete", "job", job_id)
    if done is None:
        raise ServiceError("job_not_found")
    if done == "active":
        raise ServiceError("job_active", "cancel it first: POST /v1/jobs/{id}/cancel")
    sweep_now(services.storage, done)
    logger.info("job {} deleted", job_id)
    return Response(status_code=204)


@router.get(
    "/jobs/{job_id}/result",
    response_model=JobResult,
    summary="Probability, label, operating points, QC, series and model of a finished job",
    responses=error_responses(*NEEDS_SUCCEEDED),
)
def read_result(job_id: uuid.UUID, services: ServicesDep, audit: AuditDep) -> Any:
    with services.db.conn() as conn:
        job = succeeded_prediction(conn, job_id, audit.client)
        result = get_result(conn, job_id)
        if result is None:
            raise ServiceError("job_not_finished")
        audit.record(conn, "read", "result", job_id)
    return result.model_copy(update={"client_ref": job.client_ref, "metadata": job.metadata})
