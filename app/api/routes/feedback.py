"""Radiologists' feedback on a job: give an answer (one current per reader), read the history."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import Client, ServicesDep
from app.api.idempotency import IdemKey, body_hash, run_idempotent
from app.api.responses import error_responses
from app.db import Conn
from app.errors import ServiceError
from app.logs import logger
from app.repository import get_job
from app.repository.feedback import add_feedback, current_feedback, feedback_history
from app.schemas_feedback import FeedbackCreate, FeedbackHistory, JobFeedback

router = APIRouter(prefix="/v1", tags=["feedback"])


_GIVE_SUMMARY = "A reader's answer on a succeeded prediction (replaces that reader's current answer)"


@router.post(
    "/jobs/{job_id}/feedback",
    response_model=JobFeedback,
    status_code=201,
    summary=_GIVE_SUMMARY,
    responses=error_responses(
        "unauthorized",
        "job_not_found",
        "feedback_not_accepted",
        "validation_error",
        "idempotency_conflict",
        "idempotency_in_progress",
    ),
)
def give_feedback(
    job_id: uuid.UUID,
    req: FeedbackCreate,
    services: ServicesDep,
    client: Client,
    idempotency_key: IdemKey = None,
) -> Any:
    """Several readers may answer; each reader has one current answer (a new one replaces it,
    the old one stays in the history). Answers the job's current feedback."""

    def give(conn: Conn) -> tuple[int, dict[str, Any]]:
        job = get_job(conn, job_id, client)
        if job is None:
            raise ServiceError("job_not_found")
        if job.kind != "predict" or job.state != "succeeded":
            detail = f"the job is a {job.state} {job.kind} job, not a succeeded prediction"
            raise ServiceError("feedback_not_accepted", detail)
        add_feedback(
            conn,
            job_id,
            reader=req.reader,
            ground_truth=req.ground_truth,
            agrees=req.agrees,
            comment=req.comment,
        )
        return 201, current_feedback(conn, [job_id])[job_id].model_dump(mode="json")

    payload = req.model_dump(mode="json") | {"job_id": str(job_id)}
    route = f"POST /v1/jobs/{job_id}/feedback"
    status, body, replayed = run_idempotent(
        services.db, client, idempotency_key, route, body_hash(payload), give
    )
    if not replayed:
        logger.info("feedback on job {}", job_id)
    return JSONResponse(body, status_code=status)


@router.get(
    "/jobs/{job_id}/feedback",
    responses=error_responses("unauthorized", "job_not_found"),
    response_model=FeedbackHistory,
    summary="A job's current feedback and every answer ever given (replaced ones too)",
)
def read_feedback(job_id: uuid.UUID, services: ServicesDep, client: Client) -> FeedbackHistory:
    """Any job of the caller (an explain job, or one without feedback, has an empty history)."""
    with services.db.conn() as conn:
        if get_job(conn, job_id, client) is None:
            raise ServiceError("job_not_found")
        history = feedback_history(conn, job_id)
        current = current_feedback(conn, [job_id]).get(job_id)
    return FeedbackHistory(job_id=job_id, feedback=current, history=history)
