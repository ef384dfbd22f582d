"""``Idempotency-Key`` rows: a key reserved with its request hash, then the stored answer."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn

__all__ = [
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "idempotency_begin",
    "idempotency_store",
    "purge_idempotency",
]


class IdempotencyConflictError(Exception):
    """The key was used before with another request."""


class IdempotencyInProgressError(Exception):
    """The key's first request has not finished."""


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
