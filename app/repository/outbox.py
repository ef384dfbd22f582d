"""The webhook outbox: a row per delivery, written in the transaction of the change it reports."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn
from app.repository.records import Delivery, Row

__all__ = ["outbox_add", "outbox_done", "outbox_retry", "outbox_rows", "outbox_take_due"]


def outbox_add(
    conn: Conn,
    job_id: uuid.UUID | None,
    client: str,
    url: str,
    event: str,
    payload: Mapping[str, Any],
    *,
    study_id: uuid.UUID | None = None,
) -> None:
    """Queue one delivery (:func:`app.repository.events.emit` decides whether and where)."""
    conn.execute(
        "INSERT INTO webhook_outbox (job_id, study_id, client, url, event, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (job_id, study_id, client, url, event, Jsonb(dict(payload))),
    )


def outbox_take_due(
    conn: Conn,
    limit: int,
    lease_s: float,
    *,
    per_client: int = 1_000_000,
    busy: Mapping[str, int] | None = None,
) -> list[Delivery]:
    """Due deliveries, leased for ``lease_s`` so that concurrent dispatchers skip them.

    At most ``limit`` rows, oldest due first, and at most ``per_client`` minus ``busy[client]``
    (the caller's deliveries in flight) of any one client.
    """
    rows = conn.execute(
        "WITH clients AS (SELECT client, min(next_attempt_at) AS first FROM webhook_outbox "
        "      WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= now() "
        "      AND coalesce((%(busy)s::jsonb ->> client)::int, 0) < %(per_client)s "
        "      GROUP BY client ORDER BY first LIMIT %(limit)s), "
        "due AS (SELECT w.id, w.next_attempt_at FROM clients c CROSS JOIN LATERAL ("
        "      SELECT id, next_attempt_at FROM webhook_outbox "
        "      WHERE client = c.client AND delivered_at IS NULL AND dead_at IS NULL "
        "      AND next_attempt_at <= now() "
        "      ORDER BY next_attempt_at, id "
        "      LIMIT %(per_client)s - coalesce((%(busy)s::jsonb ->> c.client)::int, 0) "
        "      FOR UPDATE SKIP LOCKED) w ORDER BY w.next_attempt_at, w.id LIMIT %(limit)s) "
        "UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => %(lease)s) "
        "FROM due WHERE o.id = due.id "
        "RETURNING o.id, o.job_id, o.client, o.url, o.event, o.payload, o.attempts, o.created_at",
        {
            "per_client": per_client,
            "busy": Jsonb(dict(busy or {})),
            "limit": limit,
            "lease": lease_s,
        },
    ).fetchall()
    return sorted((Delivery.from_row(r) for r in rows), key=lambda d: d.id)


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
