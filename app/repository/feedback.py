"""Radiologists' feedback: append-only answers, one current answer per reader and job.

A new answer of a reader marks their previous one not current in the same transaction (the
job's row is locked first, so two answers of one reader cannot both stay current). A job's
ground truth comes from the ``feedback_consensus`` view (majority of current answers, a tie
to the most recent). Rows go with their job (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from app.db import Conn
from app.repository.jobs import lock_job
from app.schemas_feedback import FeedbackEntry, JobFeedback

__all__ = ["add_feedback", "current_feedback", "feedback_history"]

_COLS = "job_id, reader, ground_truth, agrees, comment, current, created_at"


def add_feedback(
    conn: Conn,
    job_id: uuid.UUID,
    *,
    reader: str,
    ground_truth: str,
    agrees: bool | None,
    comment: str | None,
) -> None:
    """Record ``reader``'s answer on ``job_id``, replacing their current one (call inside ``tx``)."""
    lock_job(conn, job_id)
    conn.execute(
        "UPDATE feedback SET current = false WHERE job_id = %s AND reader = %s AND current",
        (job_id, reader),
    )
    conn.execute(
        "INSERT INTO feedback (job_id, reader, ground_truth, agrees, comment) VALUES (%s, %s, %s, %s, %s)",
        (job_id, reader, ground_truth, agrees, comment),
    )


def current_feedback(conn: Conn, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobFeedback]:
    """The current feedback of each of ``job_ids`` that has some (one query each for answers and truth)."""
    if not job_ids:
        return {}
    ids = list(job_ids)
    truths = conn.execute(
        "SELECT job_id, ground_truth FROM feedback_consensus WHERE job_id = ANY(%s)", (ids,)
    ).fetchall()
    rows = conn.execute(
        f"SELECT {_COLS} FROM feedback WHERE job_id = ANY(%s) AND current ORDER BY id".encode(), (ids,)
    ).fetchall()
    readers: dict[uuid.UUID, list[FeedbackEntry]] = {}
    for r in rows:
        readers.setdefault(r["job_id"], []).append(FeedbackEntry.model_validate(r))
    return {
        t["job_id"]: JobFeedback(ground_truth=t["ground_truth"], readers=readers.get(t["job_id"], []))
        for t in truths
    }


def feedback_history(conn: Conn, job_id: uuid.UUID) -> list[FeedbackEntry]:
    """Every answer on ``job_id``, oldest first."""
    rows = conn.execute(
        f"SELECT {_COLS} FROM feedback WHERE job_id = %s ORDER BY id".encode(), (job_id,)
    ).fetchall()
    return [FeedbackEntry.model_validate(r) for r in rows]
