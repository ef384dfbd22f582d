"""Explanations: explain a predicted job with another method (an explain job), read its explanation."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from app.api.audit import AuditDep
from app.api.checks import check_explain_cost, checked_callback_url, existing_explanation
from app.api.deps import Client, ServicesDep
from app.api.idempotency import IdemKey, body_hash, run_idempotent
from app.api.responses import error_responses
from app.api.routes.jobs import NEEDS_SUCCEEDED, enqueue_job, job_or_404, require_succeeded
from app.db import Conn
from app.errors import ServiceError
from app.quotas import check_queued_jobs
from app.repository import get_explanations, get_result, get_study, insert_job
from app.schemas import ExplainRequest, Explanation, JobAccepted, check_explain_params

router = APIRouter(prefix="/v1", tags=["jobs"])


def _selected_series(conn: Conn, job_id: uuid.UUID) -> str | None:
    result = get_result(conn, job_id)
    return None if result is None else result.series.selected_uid


@router.post(
    "/jobs/{job_id}/explain",
    status_code=202,
    response_model=JobAccepted,
    summary="Explain an already predicted job with another method (queues an explain job)",
    description="200 with the existing job when the same method and parameters were already "
    "explained or are being explained (no new job).",
    responses={
        200: {"model": JobAccepted, "description": "the job that explained (or is explaining) the same"},
        **error_responses(
            *NEEDS_SUCCEEDED,
            "quota_exceeded",
            "study_not_found",
            "callback_url_invalid",
            "explain_too_costly",
            "idempotency_conflict",
        ),
    },
)
def explain_job(
    job_id: uuid.UUID,
    req: ExplainRequest,
    services: ServicesDep,
    client: Client,
    idempotency_key: IdemKey = None,
) -> Any:
    try:
        params = check_explain_params(req.method, req.params)
    except ValueError as e:
        raise ServiceError("validation_error", str(e)) from None
    callback_url = checked_callback_url(services, req.callback_url)

    def create(conn: Conn) -> tuple[int, dict[str, Any]]:
        parent = job_or_404(conn, job_id, client)
        if parent.kind != "predict":
            raise ServiceError("job_not_found", "explain a predict job")
        require_succeeded(parent)
        check_explain_cost(services, parent.model, req.method, params)
        same = existing_explanation(conn, services, parent, req.method, params)
        if same is not None:  # already explained, or being explained: that job
            return 200, same.accepted_view()
        study = get_study(conn, client, parent.study_id) if parent.study_id else None
        if study is None:
            raise ServiceError("study_not_found", "the study of this job was deleted")
        check_queued_jobs(conn, client, services.settings)  # 429 quota_exceeded when full
        job = insert_job(
            conn,
            client=client,
            study=study,
            model=parent.model,
            series_uid=(parent.series_uid or _selected_series(conn, job_id)),
            explain=req.method,
            explain_params=params,
            callback_url=callback_url,
            max_attempts=services.settings.max_attempts,
            kind="explain",
            parent_job_id=job_id,
            priority=req.priority,
            client_ref=parent.client_ref,
            metadata=parent.metadata,
        )
        return 202, job.accepted_view()

    payload = req.model_dump(mode="json") | {"job_id": str(job_id)}
    status, body, replayed = run_idempotent(
        services.db, client, idempotency_key, f"POST /v1/jobs/{job_id}/explain", body_hash(payload), create
    )
    if not replayed and status == 202:
        enqueue_job(services, uuid.UUID(body["job_id"]), req.priority == "urgent")
    return JSONResponse(body, status_code=status, headers={"Location": body["status_url"]})


@router.get(
    "/jobs/{job_id}/explanation",
    response_model=Explanation,
    summary="Saliency of a predicted job: stats, geometry and presigned URLs (NIfTI, PNG, JSON)",
    responses=error_responses(*NEEDS_SUCCEEDED, "explanation_not_found"),
)
def read_explanation(
    job_id: uuid.UUID,
    services: ServicesDep,
    audit: AuditDep,
    method: Annotated[str | None, Query(description="default: the most recent explanation")] = None,
) -> Any:
    with services.db.conn() as conn:
        job = job_or_404(conn, job_id, audit.client)
        if job.kind == "explain" and job.parent_job_id is not None:
            job_id, method = job.parent_job_id, method or job.explain
            if job.state != "succeeded":
                require_succeeded(job)
        else:
            require_succeeded(job)
        found = [e for e in get_explanations(conn, job_id) if method is None or e.method == method]
        if not found:
            raise ServiceError("explanation_not_found")
        audit.record(conn, "read", "explanation", job_id)
    ttl = services.settings.presign_ttl_s
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
    return found[0].view(lambda key: services.storage.presign_get(key, ttl), expires)
