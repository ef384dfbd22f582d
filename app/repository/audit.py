"""The audit log: who read or deleted which result, explanation, study or job (docs/security.md, Audit).

Rows hold ids, client names and key ids only (never a patient identifier).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from app.db import Conn
from app.repository.records import Row

__all__ = ["AuditAction", "AuditObject", "audit_rows", "record_audit"]

AuditAction = Literal["read", "delete"]
AuditObject = Literal["result", "explanation", "study", "job"]


def record_audit(
    conn: Conn,
    *,
    client: str,
    key_hash: str,
    viewer: bool,
    action: AuditAction,
    obj: AuditObject,
    object_id: uuid.UUID,
    request_id: str | None,
) -> None:
    """Append one row; ``key_hash``: the API key used, or the key that issued the viewer token."""
    conn.execute(
        "INSERT INTO audit_log (client, key_id, via, action, object, object_id, request_id) "
        "VALUES (%s, (SELECT id FROM api_keys WHERE key_hash = %s), %s, %s, %s, %s, %s)",
        (client, key_hash, "viewer_token" if viewer else "api_key", action, obj, object_id, request_id),
    )


def audit_rows(conn: Conn, since: dt.datetime, client: str | None = None, limit: int = 10_000) -> list[Row]:
    """The rows at or after ``since`` (of ``client`` when given), oldest first."""
    return conn.execute(
        "SELECT a.at, a.client, a.key_id, k.key_prefix, a.via, a.action, a.object, a.object_id, a.request_id "
        "FROM audit_log a LEFT JOIN api_keys k ON k.id = a.key_id "
        "WHERE a.at >= %s AND (%s::text IS NULL OR a.client = %s) ORDER BY a.at, a.id LIMIT %s",
        (since, client, client, limit),
    ).fetchall()
