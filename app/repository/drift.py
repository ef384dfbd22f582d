"""Drift observations and shadow results (tables of migrations/0008_drift.sql).

Both are deleted with their job (``ON DELETE CASCADE``: retention and ``DELETE /v1/jobs/{id}``).
Window reads are bounded: ``LIMIT`` on the ``(model, created_at DESC)`` index.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.db import Conn

__all__ = [
    "DRIFT_COLUMNS",
    "ShadowPair",
    "drift_window",
    "insert_drift_observation",
    "insert_shadow_result",
    "recent_shadow_agreement",
    "shadow_pairs",
]

#: the columns of one observation besides ``job_id`` and ``created_at``
DRIFT_COLUMNS = (
    "model",
    "probability",
    "ood_score",
    "ood_flagged",
    "indeterminate",
    "slice_thickness_mm",
    "coverage_mm",
    "kernel",
    "manufacturer",
)


def insert_drift_observation(conn: Conn, job_id: uuid.UUID, obs: Mapping[str, Any]) -> None:
    """Store (or replace: a later attempt's) observation of ``job_id``; keys are :data:`DRIFT_COLUMNS`."""
    cols = ", ".join(DRIFT_COLUMNS)
    marks = ", ".join(["%s"] * (len(DRIFT_COLUMNS) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in DRIFT_COLUMNS)
    conn.execute(
        f"INSERT INTO drift_observations (job_id, {cols}) VALUES ({marks}) "
        f"ON CONFLICT (job_id) DO UPDATE SET {updates}, created_at = now()",
        (job_id, *(obs.get(c) for c in DRIFT_COLUMNS)),
    )


def drift_window(conn: Conn, model: str, max_jobs: int, hours: float | None) -> list[dict[str, Any]]:
    """The ``max_jobs`` most recent observations of ``model`` (of the last ``hours`` when set)."""
    since = "AND created_at > now() - make_interval(secs => %s) " if hours is not None else ""
    params: tuple[Any, ...] = (model, hours * 3600.0, max_jobs) if hours is not None else (model, max_jobs)
    return conn.execute(
        f"SELECT {', '.join(DRIFT_COLUMNS)} FROM drift_observations WHERE model = %s {since}"
        "ORDER BY created_at DESC LIMIT %s",
        params,
    ).fetchall()


def insert_shadow_result(
    conn: Conn,
    job_id: uuid.UUID,
    model: str,
    primary_model: str,
    probability: float,
    label: str,
    ood_score: float | None,
    ood_flagged: bool | None,
) -> None:
    """Store (or replace) the shadow model's answer on ``job_id``; nothing when the job is gone."""
    conn.execute(
        "INSERT INTO shadow_results "
        "(job_id, model, primary_model, probability, label, ood_score, ood_flagged) "
        "SELECT %s, %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM jobs WHERE id = %s) "
        "ON CONFLICT (job_id) DO UPDATE SET model = EXCLUDED.model, primary_model = EXCLUDED.primary_model, "
        "probability = EXCLUDED.probability, label = EXCLUDED.label, ood_score = EXCLUDED.ood_score, "
        "ood_flagged = EXCLUDED.ood_flagged, created_at = now()",
        (job_id, model, primary_model, probability, label, ood_score, ood_flagged, job_id),
    )


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """A job both models answered: the primary's result and the shadow's (probabilities in [0, 1]),
    and the readers' consensus on it (``pathology`` / ``normal``, None without one)."""

    job_id: uuid.UUID
    primary_probability: float
    primary_label: str
    shadow_probability: float
    shadow_label: str
    created_at: dt.datetime  # the job's
    ground_truth: str | None = None


def shadow_pairs(
    conn: Conn,
    primary: str,
    shadow: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    client: str | None = None,
    limit: int = 100_000,
) -> list[ShadowPair]:
    """The succeeded prediction jobs of ``primary`` created in ``[since, until)`` (optionally of one
    client) that ``shadow`` also answered, oldest first, each with its feedback consensus: what the
    live performance report compares the two models on."""
    rows = conn.execute(
        "SELECT j.id AS job_id, r.probability AS pp, r.label AS pl, s.probability AS sp, s.label AS sl, "
        "j.created_at, c.ground_truth FROM jobs j JOIN results r ON r.job_id = j.id "
        "JOIN shadow_results s ON s.job_id = j.id AND s.model = %s "
        "LEFT JOIN feedback_consensus c ON c.job_id = j.id "
        "WHERE j.kind = 'predict' AND j.model = %s AND j.state = 'succeeded' "
        "AND (%s::timestamptz IS NULL OR j.created_at >= %s) "
        "AND (%s::timestamptz IS NULL OR j.created_at < %s) "
        "AND (%s::text IS NULL OR j.client = %s) "
        "ORDER BY j.created_at, j.id LIMIT %s",
        (shadow, primary, since, since, until, until, client, client, limit),
    ).fetchall()
    return [
        ShadowPair(r["job_id"], r["pp"], r["pl"], r["sp"], r["sl"], r["created_at"], r["ground_truth"])
        for r in rows
    ]


def recent_shadow_agreement(conn: Conn, primary: str, shadow: str, limit: int) -> tuple[int, int]:
    """(jobs, jobs whose labels agree) among the ``limit`` most recent jobs both models answered."""
    row = conn.execute(
        "SELECT count(*) AS n, count(*) FILTER (WHERE pl = sl) AS agree FROM ("
        "SELECT r.label AS pl, s.label AS sl FROM shadow_results s JOIN results r ON r.job_id = s.job_id "
        "WHERE s.primary_model = %s AND s.model = %s ORDER BY s.created_at DESC LIMIT %s) w",
        (primary, shadow, limit),
    ).fetchone()
    assert row is not None
    return int(row["n"]), int(row["agree"])
