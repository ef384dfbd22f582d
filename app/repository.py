"""All SQL of the service (studies, jobs, results, explanations, keys, idempotency, outbox).

Functions take a connection (from :meth:`app.db.Database.tx` for multi-statement
work) and return dict rows. Writes of a running job are guarded by
``attempt = <mine>`` (DESIGN rule 2): a stale worker's write changes nothing
and the function returns False.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn

__all__ = [
    "API_KEY_PREFIX",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "hash_api_key",
]

Row = dict[str, Any]
API_KEY_PREFIX = "s4ct_"


class IdempotencyConflictError(Exception):
    """The key was used before with another request."""


class IdempotencyInProgressError(Exception):
    """The key's first request has not finished."""


# --------------------------------------------------------------------------- clients and API keys


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_client(conn: Conn, name: str) -> tuple[str, bool]:
    """(webhook secret, created) of client ``name``, creating it if needed."""
    secret = secrets.token_hex(32)
    row = conn.execute(
        "INSERT INTO clients (name, webhook_secret) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING "
        "RETURNING webhook_secret",
        (name, secret),
    ).fetchone()
    if row:
        return row["webhook_secret"], True
    got = conn.execute("SELECT webhook_secret FROM clients WHERE name = %s", (name,)).fetchone()
    assert got is not None
    return got["webhook_secret"], False


def webhook_secret(conn: Conn, client: str) -> str | None:
    row = conn.execute("SELECT webhook_secret FROM clients WHERE name = %s", (client,)).fetchone()
    return None if row is None else str(row["webhook_secret"])


def create_api_key(conn: Conn, client: str, label: str = "") -> tuple[uuid.UUID, str]:
    """A new key for ``client`` (created if needed): (key id, the key — shown once, stored hashed)."""
    ensure_client(conn, client)
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO api_keys (id, client, label, key_prefix, key_hash) VALUES (%s, %s, %s, %s, %s)",
        (key_id, client, label, key[: len(API_KEY_PREFIX) + 6], hash_api_key(key)),
    )
    return key_id, key


def revoke_api_key(conn: Conn, key_id: uuid.UUID) -> bool:
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,)
    )
    return cur.rowcount == 1


def list_api_keys(conn: Conn) -> list[Row]:
    return conn.execute(
        "SELECT id, client, label, key_prefix, created_at, last_used_at, revoked_at FROM api_keys "
        "ORDER BY created_at"
    ).fetchall()


def client_for_key(conn: Conn, key: str) -> str | None:
    """The client owning an active key, or None. Marks the key used (at most once a minute)."""
    row = conn.execute(
        "SELECT id, client, last_used_at FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
        (hash_api_key(key),),
    ).fetchone()
    if row is None:
        return None
    last = row["last_used_at"]
    if last is None or dt.datetime.now(dt.UTC) - last > dt.timedelta(minutes=1):
        conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (row["id"],))
    return str(row["client"])


# --------------------------------------------------------------------------- studies

_STUDY_COLS = "id, client, sha256, size_bytes, s3_key, members, uncompressed_bytes, created_at"


def insert_study(
    conn: Conn,
    *,
    study_id: uuid.UUID,
    client: str,
    sha256: str,
    size_bytes: int,
    s3_key: str,
    members: int,
    uncompressed_bytes: int,
) -> tuple[Row, bool]:
    """Insert a study; if the client already has one with this sha256, return that one (created False)."""
    row = conn.execute(
        f"INSERT INTO studies ({_STUDY_COLS.replace(', created_at', '')}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (client, sha256) DO NOTHING "
        f"RETURNING {_STUDY_COLS}",
        (study_id, client, sha256, size_bytes, s3_key, members, uncompressed_bytes),
    ).fetchone()
    if row is not None:
        return row, True
    existing = study_by_sha(conn, client, sha256)
    assert existing is not None
    return existing, False


def study_by_sha(conn: Conn, client: str, sha256: str) -> Row | None:
    return conn.execute(
        f"SELECT {_STUDY_COLS} FROM studies WHERE client = %s AND sha256 = %s", (client, sha256)
    ).fetchone()


def get_study(conn: Conn, client: str, study_id: uuid.UUID) -> Row | None:
    return conn.execute(
        f"SELECT {_STUDY_COLS} FROM studies WHERE id = %s AND client = %s", (study_id, client)
    ).fetchone()


def delete_study(conn: Conn, client: str, study_id: uuid.UUID) -> Row | None:
    """Delete the study row (jobs keep their results: their study_id becomes NULL)."""
    return conn.execute(
        f"DELETE FROM studies WHERE id = %s AND client = %s RETURNING {_STUDY_COLS}", (study_id, client)
    ).fetchone()


# --------------------------------------------------------------------------- jobs

_JOB_COLS = (
    "j.id, j.client, j.study_id, j.study_sha256, j.kind, j.parent_job_id, j.model, j.series_uid, "
    "j.explain, j.explain_params, j.callback_url, j.state, j.stage, j.progress, j.attempt, "
    "j.max_attempts, j.worker_id, j.lease_until, j.heartbeat_at, j.enqueued_at, j.error_code, "
    "j.error_detail, j.stage_timings, j.created_at, j.started_at, j.finished_at, j.updated_at"
)


def insert_job(
    conn: Conn,
    *,
    client: str,
    study: Row,
    model: str,
    series_uid: str | None,
    explain: str,
    explain_params: Mapping[str, Any],
    callback_url: str | None,
    max_attempts: int,
    kind: str = "predict",
    parent_job_id: uuid.UUID | None = None,
) -> Row:
    job_id = uuid.uuid4()
    row = conn.execute(
        "INSERT INTO jobs AS j (id, client, study_id, study_sha256, kind, parent_job_id, model, series_uid, "
        "explain, explain_params, callback_url, max_attempts) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        f"RETURNING {_JOB_COLS}",
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
        ),
    ).fetchone()
    assert row is not None
    return row


def get_job(conn: Conn, job_id: uuid.UUID, client: str | None = None) -> Row | None:
    """A job (of ``client`` when given) with its study's S3 key (``study_s3_key``, NULL if deleted)."""
    sql = f"SELECT {_JOB_COLS}, s.s3_key AS study_s3_key FROM jobs j "
    sql += "LEFT JOIN studies s ON s.id = j.study_id "
    sql += "WHERE j.id = %s" + (" AND j.client = %s" if client is not None else "")
    params: tuple[Any, ...] = (job_id, client) if client is not None else (job_id,)
    return conn.execute(sql.encode(), params).fetchone()


def job_with_position(conn: Conn, job_id: uuid.UUID, client: str) -> Row | None:
    """A client's job plus ``queue_position`` (queued jobs ahead of it; NULL unless queued): one query."""
    return conn.execute(
        f"SELECT {_JOB_COLS}, CASE WHEN j.state = 'queued' THEN "
        "(SELECT count(*) FROM jobs q WHERE q.state = 'queued' AND q.created_at < j.created_at) END "
        "AS queue_position FROM jobs j WHERE j.id = %s AND j.client = %s",
        (job_id, client),
    ).fetchone()


def recent_stats(conn: Conn, limit: int = 50) -> Row:
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
    return {
        "run_s": float(row["run_s"]) if row and row["run_s"] is not None else None,
        "samples": int(row["n"]) if row else 0,
        "workers": int(workers["n"]) if workers else 0,
    }


def claim_job(conn: Conn, job_id: uuid.UUID, worker_id: str, lease_s: float) -> Row | None:
    """Take a job for one attempt: queued, or running with an expired lease, and attempts left.

    One conditional UPDATE (DESIGN rule 2); returns the job with its new ``attempt``
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


def fail_exhausted(conn: Conn, job_id: uuid.UUID | None = None) -> list[Row]:
    """Fail running jobs whose lease expired with no attempts left (``worker_crashed``)."""
    where = "state = 'running' AND lease_until < now() AND attempt >= max_attempts"
    params: tuple[Any, ...] = ()
    if job_id is not None:
        where += " AND id = %s"
        params = (job_id,)
    return conn.execute(
        (
            "UPDATE jobs SET state = 'failed', error_code = 'worker_crashed', "
            "error_detail = 'the job exceeded its attempts (workers died or timed out)', "
            f"stage = NULL, finished_at = now(), updated_at = now() WHERE {where} "
            "RETURNING id, client, callback_url, attempt"
        ).encode(),
        params,
    ).fetchall()


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
) -> Row | None:
    """Mark the held attempt succeeded (``error_code`` None) or failed; None if no longer held."""
    state = "failed" if error_code else "succeeded"
    return conn.execute(
        "UPDATE jobs SET state = %s, stage = NULL, "
        "progress = CASE WHEN %s = 'succeeded' THEN 1 ELSE progress END, "
        "error_code = %s, error_detail = %s, stage_timings = stage_timings || %s, lease_until = NULL, "
        "finished_at = now(), updated_at = now() "
        "WHERE id = %s AND attempt = %s AND state = 'running' RETURNING id, client, callback_url, state",
        (state, state, error_code, error_detail, Jsonb(dict(timings)), job_id, attempt),
    ).fetchone()


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


def insert_result(conn: Conn, job_id: uuid.UUID, attempt: int, body: Mapping[str, Any]) -> None:
    conn.execute(
        "INSERT INTO results (job_id, attempt, probability, label, body) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (job_id) DO UPDATE SET attempt = EXCLUDED.attempt, probability = EXCLUDED.probability, "
        "label = EXCLUDED.label, body = EXCLUDED.body, created_at = now() "
        "WHERE results.attempt < EXCLUDED.attempt",
        (job_id, attempt, body["probability"], body["label"], Jsonb(dict(body))),
    )


def get_result(conn: Conn, job_id: uuid.UUID) -> Row | None:
    return conn.execute(
        "SELECT job_id, attempt, probability, label, body, created_at FROM results WHERE job_id = %s",
        (job_id,),
    ).fetchone()


def upsert_explanation(
    conn: Conn,
    *,
    job_id: uuid.UUID,
    method: str,
    produced_by: uuid.UUID,
    attempt: int,
    params: Mapping[str, Any],
    stats: Mapping[str, Any],
    geometry: Mapping[str, Any],
    blobs: Mapping[str, Any],
    model_name: str,
    model_version: str,
) -> None:
    conn.execute(
        "INSERT INTO explanations (job_id, method, produced_by, attempt, params, stats, geometry, blobs, "
        "model_name, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (job_id, method) DO UPDATE SET produced_by = EXCLUDED.produced_by, "
        "attempt = EXCLUDED.attempt, params = EXCLUDED.params, stats = EXCLUDED.stats, "
        "geometry = EXCLUDED.geometry, blobs = EXCLUDED.blobs, model_name = EXCLUDED.model_name, "
        "model_version = EXCLUDED.model_version, created_at = now()",
        (
            job_id,
            method,
            produced_by,
            attempt,
            Jsonb(dict(params)),
            Jsonb(dict(stats)),
            Jsonb(dict(geometry)),
            Jsonb(dict(blobs)),
            model_name,
            model_version,
        ),
    )


def get_explanations(conn: Conn, job_id: uuid.UUID) -> list[Row]:
    return conn.execute(
        "SELECT job_id, method, produced_by, attempt, params, stats, geometry, blobs, model_name, "
        "model_version, created_at FROM explanations WHERE job_id = %s ORDER BY created_at DESC",
        (job_id,),
    ).fetchall()


def job_state_counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state").fetchall()
    return {r["state"]: int(r["n"]) for r in rows}


# --------------------------------------------------------------------------- workers


def worker_seen(conn: Conn, worker_id: str, info: Mapping[str, Any]) -> None:
    conn.execute(
        "INSERT INTO workers (worker_id, info) VALUES (%s, %s) "
        "ON CONFLICT (worker_id) DO UPDATE SET seen_at = now(), info = EXCLUDED.info",
        (worker_id, Jsonb(dict(info))),
    )


def worker_gone(conn: Conn, worker_id: str) -> None:
    conn.execute("DELETE FROM workers WHERE worker_id = %s", (worker_id,))


def last_worker_heartbeat_age(conn: Conn) -> float | None:
    """Seconds since the freshest worker heartbeat, or None without any worker."""
    row = conn.execute("SELECT extract(epoch FROM now() - max(seen_at)) AS age FROM workers").fetchone()
    return None if row is None or row["age"] is None else float(row["age"])


# --------------------------------------------------------------------------- idempotency


def idempotency_begin(
    conn: Conn, client: str, key: str, route: str, request_hash: str
) -> tuple[int, Any] | None:
    """Reserve ``key`` inside the caller's transaction, or return the stored (status, response).

    A concurrent request with the same key waits on the row lock until the
    first transaction ends. Raises :class:`IdempotencyConflictError` for another
    route or body, :class:`IdempotencyInProgressError` if no response is stored.
    """
    row = conn.execute(
        "INSERT INTO idempotency_keys (client, key, route, request_hash) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (client, key) DO NOTHING RETURNING key",
        (client, key, route, request_hash),
    ).fetchone()
    if row is not None:
        return None
    prev = conn.execute(
        "SELECT route, request_hash, status_code, response FROM idempotency_keys "
        "WHERE client = %s AND key = %s FOR UPDATE",
        (client, key),
    ).fetchone()
    if prev is None:  # purged between the two statements: treat as new
        return idempotency_begin(conn, client, key, route, request_hash)
    if prev["route"] != route or prev["request_hash"] != request_hash:
        raise IdempotencyConflictError
    if prev["status_code"] is None:
        raise IdempotencyInProgressError
    return int(prev["status_code"]), prev["response"]


def idempotency_store(conn: Conn, client: str, key: str, status_code: int, response: Any) -> None:
    conn.execute(
        "UPDATE idempotency_keys SET status_code = %s, response = %s WHERE client = %s AND key = %s",
        (status_code, Jsonb(response), client, key),
    )


def purge_idempotency(conn: Conn, older_than_s: float) -> int:
    cur = conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)", (older_than_s,)
    )
    return cur.rowcount


# --------------------------------------------------------------------------- webhook outbox


def outbox_add(
    conn: Conn, job_id: uuid.UUID, client: str, url: str, event: str, payload: Mapping[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO webhook_outbox (job_id, client, url, event, payload) VALUES (%s, %s, %s, %s, %s)",
        (job_id, client, url, event, Jsonb(dict(payload))),
    )


def outbox_take_due(conn: Conn, limit: int, lease_s: float) -> list[Row]:
    """Due deliveries, leased for ``lease_s`` so that concurrent dispatchers skip them."""
    return conn.execute(
        "UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => %s) "
        "FROM (SELECT id FROM webhook_outbox WHERE delivered_at IS NULL AND dead_at IS NULL "
        "      AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) due "
        "WHERE o.id = due.id "
        "RETURNING o.id, o.job_id, o.client, o.url, o.event, o.payload, o.attempts, o.created_at",
        (lease_s, limit),
    ).fetchall()


def outbox_done(conn: Conn, outbox_id: int, status: int | None) -> None:
    conn.execute(
        "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1, last_status = %s, "
        "last_error = NULL WHERE id = %s",
        (status, outbox_id),
    )


def outbox_retry(conn: Conn, outbox_id: int, status: int | None, error: str, delay_s: float | None) -> None:
    """Record a failed delivery: retry after ``delay_s``, or give up (``delay_s`` None)."""
    conn.execute(
        "UPDATE webhook_outbox SET attempts = attempts + 1, last_status = %s, last_error = %s, "
        "next_attempt_at = now() + make_interval(secs => coalesce(%s, 0)), "
        "dead_at = CASE WHEN %s::double precision IS NULL THEN now() ELSE NULL END WHERE id = %s",
        (status, error[:500], delay_s, delay_s, outbox_id),
    )


def outbox_rows(conn: Conn, job_id: uuid.UUID) -> list[Row]:
    return conn.execute(
        "SELECT id, url, event, attempts, delivered_at, dead_at, last_status, last_error, next_attempt_at "
        "FROM webhook_outbox WHERE job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()


def oldest_queued_age_s(conn: Conn) -> float:
    """Seconds since the oldest ``queued`` job was created (0.0 when none is queued)."""
    row = conn.execute(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision AS age "
        "FROM jobs WHERE state = 'queued'"
    ).fetchone()
    return max(0.0, float(row["age"])) if row is not None else 0.0
