"""Job rows: create, read, claim for one attempt, leases, stages, finish, release, reconciler queries.

Writes of a running job are guarded by ``attempt = <mine>`` (architecture rule 2): a stale
worker's write changes nothing and the function says so (None or False).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn
from app.repository.records import Job, JobKind, RecentStats, Row

__all__ = [
    "cancel_job",
    "claim_job",
    "extend_leases",
    "fail_exhausted",
    "finish_job",
    "get_job",
    "insert_job",
    "job_state_counts",
    "job_with_position",
    "mark_enqueued",
    "oldest_queued_age_s",
    "promote_aged",
    "queued_before",
    "recent_stats",
    "release_job",
    "requeue_expired",
    "set_stage",
    "urgent_among",
]

JOB_COLS = (
    "j.id, j.client, j.study_id, j.study_sha256, j.kind, j.parent_job_id, j.model, j.series_uid, "
    "j.explain, j.explain_params, j.callback_url, j.state, j.stage, j.progress, j.attempt, "
    "j.max_attempts, j.worker_id, j.lease_until, j.heartbeat_at, j.enqueued_at, j.error_code, "
    "j.error_detail, j.stage_timings, j.created_at, j.started_at, j.finished_at, j.updated_at, "
    "j.priority, j.client_ref, j.metadata, j.promoted_at, j.cancelled_at"
)


def _urgent(alias: str) -> str:
    """SQL: the job counts as urgent (asked so, or promoted after waiting ``priority_age_s``)."""
    return f"({alias}.priority = 'urgent' OR {alias}.promoted_at IS NOT NULL)"


#: SQL: queued jobs a worker takes before queued job ``j`` (urgent first, then the oldest)
QUEUE_POSITION = (
    "CASE WHEN j.state = 'queued' THEN (SELECT count(*) FROM jobs q WHERE q.state = 'queued' AND "
    f"({_urgent('q')} > {_urgent('j')} OR ({_urgent('q')} = {_urgent('j')} AND q.created_at < j.created_at))"
    ") END AS queue_position"
)


def _job(row: Row | None) -> Job | None:
    return None if row is None else Job.from_row(row)


def insert_job(
    conn: Conn,
    *,
    client: str,
    study: Mapping[str, Any],
    model: str,
    series_uid: str | None,
    explain: str,
    explain_params: Mapping[str, Any],
    callback_url: str | None,
    max_attempts: int,
    kind: JobKind = "predict",
    parent_job_id: uuid.UUID | None = None,
    priority: str = "routine",
    client_ref: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Job:
    job_id = uuid.uuid4()
    row = conn.execute(
        "INSERT INTO jobs AS j (id, client, study_id, study_sha256, kind, parent_job_id, model, series_uid, "
        "explain, explain_params, callback_url, max_attempts, priority, client_ref, metadata) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        f"RETURNING {JOB_COLS}",
        (
            job_id,
            client,
            study["id"],
            study["sha256"],
            kind,
            parent_job_id,
            model,
            series_uid,
            explain,
            Jsonb(dict(explain_params)),
            callback_url,
            max_attempts,
            priority,
            client_ref,
            Jsonb(dict(metadata or {})),
        ),
    ).fetchone()
    assert row is not None
    return Job.from_row(row)


def get_job(conn: Conn, job_id: uuid.UUID, client: str | None = None) -> Job | None:
    """A job (of ``client`` when given) with its study's S3 key (``study_s3_key``, NULL if deleted)."""
    sql = f"SELECT {JOB_COLS}, s.s3_key AS study_s3_key FROM jobs j "
    sql += "LEFT JOIN studies s ON s.id = j.study_id "
    sql += "WHERE j.id = %s" + (" AND j.client = %s" if client is not None else "")
    params: tuple[Any, ...] = (job_id, client) if client is not None else (job_id,)
    return _job(conn.execute(sql.encode(), params).fetchone())


def job_with_position(conn: Conn, job_id: uuid.UUID, client: str) -> Job | None:
    """A client's job plus ``queue_position`` (queued jobs a worker takes first; None unless queued)
    and its result's ``label``: one query."""
    row = conn.execute(
        f"SELECT {JOB_COLS}, r.label, {QUEUE_POSITION} FROM jobs j "
        "LEFT JOIN results r ON r.job_id = j.id WHERE j.id = %s AND j.client = %s",
        (job_id, client),
    ).fetchone()
    return _job(row)


def recent_stats(conn: Conn, limit: int = 50) -> RecentStats:
    """Mean run seconds of the last ``limit`` succeeded jobs and the number of live workers."""
    row = conn.execute(
        "SELECT avg(extract(epoch FROM finished_at - started_at)) AS run_s, count(*) AS n FROM "
        "(SELECT started_at, finished_at FROM jobs WHERE state = 'succeeded' AND started_at IS NOT NULL "
        " ORDER BY finished_at DESC LIMIT %s) t",
        (limit,),
    ).fetchone()
    workers = conn.execute(
        "SELECT count(*) AS n FROM workers WHERE seen_at > now() - interval '60 seconds'"
    ).fetchone()
    return RecentStats(
        run_s=float(row["run_s"]) if row and row["run_s"] is not None else None,
        samples=int(row["n"]) if row else 0,
        workers=int(workers["n"]) if workers else 0,
    )


def claim_job(conn: Conn, job_id: uuid.UUID, worker_id: str, lease_s: float) -> Job | None:
    """Take a job for one attempt: queued, or running with an expired lease, and attempts left.

    One conditional UPDATE (architecture rule 2); returns the job with its new ``attempt``
    or None if someone else holds it, it is finished, or it has no attempts left.
    """
    cur = conn.execute(
        "UPDATE jobs AS j SET state = 'running', attempt = attempt + 1, worker_id = %s, "
        "lease_until = now() + make_interval(secs => %s), heartbeat_at = now(), stage = 'fetching', "
        "progress = 0, started_at = coalesce(started_at, now()), updated_at = now() "
        "WHERE id = %s AND attempt < max_attempts "
        "AND (state = 'queued' OR (state = 'running' AND lease_until < now())) "
        "RETURNING j.id",
        (worker_id, lease_s, job_id),
    )
    if cur.fetchone() is None:
        return None
    return get_job(conn, job_id)


def fail_exhausted(conn: Conn, job_id: uuid.UUID | None = None) -> list[Job]:
    """Fail running jobs whose lease expired with no attempts left (``worker_crashed``)."""
    where = "state = 'running' AND lease_until < now() AND attempt >= max_attempts"
    params: tuple[Any, ...] = ()
    if job_id is not None:
        where += " AND id = %s"
        params = (job_id,)
    rows = conn.execute(
        (
            "UPDATE jobs AS j SET state = 'failed', error_code = 'worker_crashed', "
            "error_detail = 'the job exceeded its attempts (workers died or timed out)', "
            f"stage = NULL, finished_at = now(), updated_at = now() WHERE {where} "
            f"RETURNING {JOB_COLS}"
        ).encode(),
        params,
    ).fetchall()
    return [Job.from_row(r) for r in rows]


def requeue_expired(conn: Conn) -> list[uuid.UUID]:
    """Put running jobs whose lease expired (attempts left) back to queued; returns their ids."""
    rows = conn.execute(
        "UPDATE jobs SET state = 'queued', stage = NULL, progress = 0, worker_id = NULL, "
        "lease_until = NULL, enqueued_at = now(), updated_at = now() "
        "WHERE state = 'running' AND lease_until < now() AND attempt < max_attempts RETURNING id"
    ).fetchall()
    return [r["id"] for r in rows]


def queued_before(conn: Conn, older_than_s: float, limit: int = 1000) -> list[uuid.UUID]:
    """Queued jobs enqueued more than ``older_than_s`` ago (reconciler candidates)."""
    rows = conn.execute(
        "SELECT id FROM jobs WHERE state = 'queued' AND enqueued_at < now() - make_interval(secs => %s) "
        "ORDER BY created_at LIMIT %s",
        (older_than_s, limit),
    ).fetchall()
    return [r["id"] for r in rows]


def urgent_among(conn: Conn, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``job_ids`` that belong to the urgent lane (urgent, or promoted)."""
    if not job_ids:
        return set()
    rows = conn.execute(
        f"SELECT id FROM jobs j WHERE id = ANY(%s) AND {_urgent('j')}".encode(), (list(job_ids),)
    ).fetchall()
    return {r["id"] for r in rows}


def promote_aged(conn: Conn, age_s: float) -> list[uuid.UUID]:
    """Routine jobs queued longer than ``age_s`` count as urgent from now on (anti-starvation)."""
    rows = conn.execute(
        "UPDATE jobs SET promoted_at = now() WHERE state = 'queued' AND priority = 'routine' "
        "AND promoted_at IS NULL AND created_at < now() - make_interval(secs => %s) RETURNING id",
        (age_s,),
    ).fetchall()
    return [r["id"] for r in rows]


def mark_enqueued(conn: Conn, job_ids: Sequence[uuid.UUID]) -> None:
    conn.execute(
        "UPDATE jobs SET enqueued_at = now() WHERE id = ANY(%s) AND state = 'queued'", (list(job_ids),)
    )


def extend_leases(conn: Conn, held: Sequence[tuple[uuid.UUID, int]], lease_s: float) -> set[uuid.UUID]:
    """Heartbeat: extend the leases of jobs this worker holds; returns the ids it still holds."""
    if not held:
        return set()
    rows = conn.execute(
        "UPDATE jobs AS j SET lease_until = now() + make_interval(secs => %s), heartbeat_at = now() "
        "FROM unnest(%s::uuid[], %s::int[]) AS h(id, attempt) "
        "WHERE j.id = h.id AND j.attempt = h.attempt AND j.state = 'running' RETURNING j.id",
        (lease_s, [h[0] for h in held], [h[1] for h in held]),
    ).fetchall()
    return {r["id"] for r in rows}


def set_stage(
    conn: Conn,
    job_id: uuid.UUID,
    attempt: int,
    stage: str,
    progress: float,
    timings: Mapping[str, float] | None = None,
) -> bool:
    cur = conn.execute(
        "UPDATE jobs SET stage = %s, progress = %s, stage_timings = stage_timings || %s, updated_at = now() "
        "WHERE id = %s AND attempt = %s AND state = 'running'",
        (stage, min(max(progress, 0.0), 1.0), Jsonb(dict(timings or {})), job_id, attempt),
    )
    return cur.rowcount == 1


def finish_job(
    conn: Conn,
    job_id: uuid.UUID,
    attempt: int,
    *,
    timings: Mapping[str, float],
    error_code: str | None = None,
    error_detail: str | None = None,
) -> Job | None:
    """Mark the held attempt succeeded (``error_code`` None) or failed; None if no longer held."""
    state = "failed" if error_code else "succeeded"
    row = conn.execute(
        "UPDATE jobs AS j SET state = %s, stage = NULL, "
        "progress = CASE WHEN %s = 'succeeded' THEN 1 ELSE progress END, "
        "error_code = %s, error_detail = %s, stage_timings = stage_timings || %s, lease_until = NULL, "
        "finished_at = now(), updated_at = now() "
        f"WHERE id = %s AND attempt = %s AND state = 'running' RETURNING {JOB_COLS}",
        (state, state, error_code, error_detail, Jsonb(dict(timings)), job_id, attempt),
    ).fetchone()
    return _job(row)


def release_job(
    conn: Conn, job_id: uuid.UUID, attempt: int, detail: str, *, spend: bool = True
) -> str | None:
    """Give a held attempt back.

    After a transient failure (``spend``): requeued if attempts are left (returns
    ``"queued"``), else failed with ``internal_error`` (returns ``"failed"``). A graceful
    shutdown (``spend=False``) always requeues and raises ``max_attempts`` by one, so the
    attempt is not charged; attempt numbers still only grow, so the attempt guard keeps
    a late write of the released attempt out. None if the attempt was not held.
    """
    row = conn.execute(
        "UPDATE jobs SET "
        "state = CASE WHEN %(spend)s AND attempt >= max_attempts THEN 'failed' ELSE 'queued' END, "
        "error_code = CASE WHEN %(spend)s AND attempt >= max_attempts THEN 'internal_error' END, "
        "error_detail = CASE WHEN %(spend)s AND attempt >= max_attempts THEN %(detail)s END, "
        "finished_at = CASE WHEN %(spend)s AND attempt >= max_attempts THEN now() END, "
        "max_attempts = max_attempts + CASE WHEN %(spend)s THEN 0 ELSE 1 END, "
        "stage = NULL, progress = 0, worker_id = NULL, lease_until = NULL, enqueued_at = now(), "
        "updated_at = now() "
        "WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'running' RETURNING state",
        {"spend": spend, "detail": detail, "id": job_id, "attempt": attempt},
    ).fetchone()
    return None if row is None else str(row["state"])


def cancel_job(conn: Conn, job_id: uuid.UUID, client: str) -> Job | None:
    """Cancel a queued or running job of ``client``; None if it is not (finished, cancelled or not its).

    A cancelled job is never claimed again, and every attempt-guarded write of a worker still
    running it (stage, outcome, lease) now changes nothing (they all require ``running``).
    """
    row = conn.execute(
        "UPDATE jobs AS j SET state = 'cancelled', stage = NULL, lease_until = NULL, cancelled_at = now(), "
        "finished_at = now(), updated_at = now() "
        f"WHERE id = %s AND client = %s AND state IN ('queued', 'running') RETURNING {JOB_COLS}",
        (job_id, client),
    ).fetchone()
    return _job(row)


def job_state_counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetchall()
    return {r["state"]: int(r["n"]) for r in rows}


def oldest_queued_age_s(conn: Conn) -> float:
    """Seconds since the oldest ``queued`` job was created (0.0 when none is queued)."""
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision AS age "
        "FROM jobs WHERE state = 'queued'"
    ).fetchone()
    return max(0.0, float(row["age"])) if row is not None else 0.0


def explain_jobs_of(conn: Conn, parent_id: uuid.UUID, method: str) -> list[Job]:
    """Explain jobs of ``parent_id`` with ``method`` that are queued or running, the oldest first."""
    rows = conn.execute(
        f"SELECT {JOB_COLS} FROM jobs j WHERE j.parent_job_id = %s AND j.kind = 'explain' "
        "AND j.explain = %s AND j.state IN ('queued', 'running') ORDER BY j.created_at",
        (parent_id, method),
    ).fetchall()
    return [Job.from_row(r) for r in rows]


def lock_job(conn: Conn, job_id: uuid.UUID) -> None:
    """Hold ``job_id``'s row until the transaction ends (serialises requests about one job)."""
    conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
