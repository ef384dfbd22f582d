"""Studies: one row per uploaded ZIP (hashes, sizes and counts; never file names or header values)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from app.db import Conn
from app.repository.records import Row

__all__ = ["delete_study", "get_study", "insert_study", "store_study_series", "study_by_sha", "study_series"]

STUDY_COLS = (
    "id, client, sha256, size_bytes, s3_key, members, uncompressed_bytes, client_ref, metadata, created_at"
)


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
    client_ref: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Row, bool]:
    """Insert a study; if the client already has one with this sha256, return that one (created False).

    The existing study keeps its own ``client_ref`` and ``metadata``.
    """
    row = conn.execute(
        f"INSERT INTO studies ({STUDY_COLS.replace(', created_at', '')}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (client, sha256) DO NOTHING "
        f"RETURNING {STUDY_COLS}",
        (
            study_id,
            client,
            sha256,
            size_bytes,
            s3_key,
            members,
            uncompressed_bytes,
            client_ref,
            Jsonb(dict(metadata or {})),
        ),
    ).fetchone()
    if row is not None:
        return row, True
    existing = study_by_sha(conn, client, sha256)
    assert existing is not None
    return existing, False


def study_by_sha(conn: Conn, client: str, sha256: str) -> Row | None:
    return conn.execute(
        f"SELECT {STUDY_COLS} FROM studies WHERE client = %s AND sha256 = %s", (client, sha256)
    ).fetchone()


def get_study(conn: Conn, client: str, study_id: uuid.UUID) -> Row | None:
    return conn.execute(
        f"SELECT {STUDY_COLS} FROM studies WHERE id = %s AND client = %s", (study_id, client)
    ).fetchone()


def study_series(conn: Conn, client: str, study_id: uuid.UUID) -> tuple[Row | None, dict[str, Any] | None]:
    """(the study row or None, its stored series picker or None when not scanned yet)."""
    row = conn.execute(
        f"SELECT {STUDY_COLS}, series FROM studies WHERE id = %s AND client = %s", (study_id, client)
    ).fetchone()
    return row, (None if row is None else row.pop("series"))


def store_study_series(conn: Conn, study_id: uuid.UUID, body: Mapping[str, Any]) -> None:
    """Keep the series picker of a study (a header scan; its answer never changes)."""
    conn.execute("UPDATE studies SET series = %s WHERE id = %s", (Jsonb(dict(body)), study_id))


def delete_study(conn: Conn, client: str, study_id: uuid.UUID) -> Row | None:
    """Delete the study row (jobs keep their results: their study_id becomes NULL)."""
    return conn.execute(
        f"DELETE FROM studies WHERE id = %s AND client = %s RETURNING {STUDY_COLS}", (study_id, client)
    ).fetchone()
