"""Results and explanations of jobs."""

from __future__ import annotations

import uuid

from psycopg.types.json import Jsonb

from app.db import Conn
from app.repository.records import ExplanationRecord
from app.schemas import JobResult

__all__ = ["get_explanations", "get_result", "insert_result", "upsert_explanation"]


def insert_result(conn: Conn, result: JobResult) -> None:
    """Store the result of ``result.attempt`` (a later attempt's result replaces an earlier one's).

    The body is the model's JSON, so the stored body is what ``GET /v1/jobs/{id}/result`` serves.
    """
    conn.execute(
        "INSERT INTO results (job_id, attempt, probability, label, body) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (job_id) DO UPDATE SET attempt = EXCLUDED.attempt, probability = EXCLUDED.probability, "
        "label = EXCLUDED.label, body = EXCLUDED.body, created_at = now() "
        "WHERE results.attempt < EXCLUDED.attempt",
        (
            result.job_id,
            result.attempt,
            result.probability,
            result.label,
            Jsonb(result.model_dump(mode="json")),
        ),
    )


def get_result(conn: Conn, job_id: uuid.UUID) -> JobResult | None:
    row = conn.execute("SELECT body FROM results WHERE job_id = %s", (job_id,)).fetchone()
    return None if row is None else JobResult.model_validate(row["body"])


def upsert_explanation(conn: Conn, explanation: ExplanationRecord) -> None:
    """Store ``explanation`` (the latest of a job and method wins)."""
    e = explanation
    conn.execute(
        "INSERT INTO explanations (job_id, method, produced_by, attempt, params, stats, geometry, blobs, "
        "model_name, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (job_id, method) DO UPDATE SET produced_by = EXCLUDED.produced_by, "
        "attempt = EXCLUDED.attempt, params = EXCLUDED.params, stats = EXCLUDED.stats, "
        "geometry = EXCLUDED.geometry, blobs = EXCLUDED.blobs, model_name = EXCLUDED.model_name, "
        "model_version = EXCLUDED.model_version, created_at = now()",
        (
            e.job_id,
            e.method,
            e.produced_by,
            e.attempt,
            Jsonb(dict(e.params)),
            Jsonb(dict(e.stats)),
            Jsonb(dict(e.geometry)),
            Jsonb(e.blobs_json()),
            e.model_name,
            e.model_version,
        ),
    )


def get_explanations(conn: Conn, job_id: uuid.UUID) -> list[ExplanationRecord]:
    """The explanations of predicted job ``job_id``, the most recent first."""
    rows = conn.execute(
        "SELECT job_id, method, produced_by, attempt, params, stats, geometry, blobs, model_name, "
        "model_version, created_at FROM explanations WHERE job_id = %s ORDER BY created_at DESC",
        (job_id,),
    ).fetchall()
    return [ExplanationRecord.from_row(r) for r in rows]
