"""DICOM results of jobs, the clients' DICOMweb endpoints and the push outbox (docs/interop.md)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from psycopg.types.json import Jsonb

from app.db import Conn

__all__ = [
    "DicomObject",
    "DicomOutputs",
    "DicomwebImport",
    "Push",
    "add_endpoint",
    "attach_study",
    "get_dicom_outputs",
    "get_import",
    "insert_dicom_outputs",
    "insert_import",
    "list_endpoints",
    "push_done",
    "push_retry",
    "push_rows",
    "push_take_due",
    "queue_push",
    "remove_endpoint",
]

EndpointRole = Literal["source", "destination"]


@dataclass(frozen=True, slots=True)
class DicomObject:
    """One DICOM result in the object store (``kind``: ``sr``, ``sc`` or ``seg``)."""

    kind: str
    key: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DicomOutputs:
    """The DICOM results of a job: written objects, or a refusal with its code."""

    job_id: uuid.UUID
    attempt: int
    status: Literal["written", "refused"]
    objects: tuple[DicomObject, ...] = ()
    error_code: str | None = None
    error_detail: str | None = None
    created_at: dt.datetime | None = field(default=None, compare=False)


def insert_dicom_outputs(conn: Conn, out: DicomOutputs) -> None:
    """Store ``out`` (a later attempt's outputs replace an earlier one's)."""
    conn.execute(
        "INSERT INTO dicom_outputs (job_id, attempt, status, error_code, error_detail, objects) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET attempt = EXCLUDED.attempt, "
        "status = EXCLUDED.status, error_code = EXCLUDED.error_code, error_detail = EXCLUDED.error_detail, "
        "objects = EXCLUDED.objects, created_at = now() WHERE dicom_outputs.attempt < EXCLUDED.attempt",
        (
            out.job_id,
            out.attempt,
            out.status,
            out.error_code,
            out.error_detail,
            Jsonb([asdict(o) for o in out.objects]),
        ),
    )


def get_dicom_outputs(conn: Conn, job_id: uuid.UUID) -> DicomOutputs | None:
    row = conn.execute(
        "SELECT job_id, attempt, status, error_code, error_detail, objects, created_at "
        "FROM dicom_outputs WHERE job_id = %s",
        (job_id,),
    ).fetchone()
    if row is None:
        return None
    objects = tuple(DicomObject(**o) for o in row.pop("objects"))
    return DicomOutputs(**row, objects=objects)


def add_endpoint(conn: Conn, client: str, role: EndpointRole, url: str) -> None:
    """Configure ``url`` for ``client`` (a new destination replaces the old one)."""
    with conn.transaction():
        if role == "destination":
            conn.execute(
                "DELETE FROM dicomweb_endpoints WHERE client = %s AND role = 'destination'", (client,)
            )
        conn.execute(
            "INSERT INTO dicomweb_endpoints (client, role, url) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (client, role, url),
        )


def remove_endpoint(conn: Conn, client: str, role: EndpointRole, url: str) -> bool:
    cur = conn.execute(
        "DELETE FROM dicomweb_endpoints WHERE client = %s AND role = %s AND url = %s", (client, role, url)
    )
    return cur.rowcount > 0


def list_endpoints(conn: Conn, client: str, role: EndpointRole | None = None) -> list[str]:
    rows = conn.execute(
        "SELECT url FROM dicomweb_endpoints WHERE client = %s AND (%s::text IS NULL OR role = %s) "
        "ORDER BY url",
        (client, role, role),
    ).fetchall()
    return [r["url"] for r in rows]


@dataclass(frozen=True, slots=True)
class Push:
    """A due STOW-RS push of a job's objects (their S3 keys) to ``url``."""

    id: int
    job_id: uuid.UUID
    client: str
    url: str
    keys: list[str]
    attempts: int


def queue_push(conn: Conn, job_id: uuid.UUID, client: str, keys: list[str]) -> bool:
    """Queue the push of ``keys`` to the client's destination; False when it has none."""
    cur = conn.execute(
        "INSERT INTO dicomweb_outbox (job_id, client, url, keys) SELECT %s, client, url, %s "
        "FROM dicomweb_endpoints WHERE client = %s AND role = 'destination'",
        (job_id, Jsonb(keys), client),
    )
    return cur.rowcount > 0


def push_take_due(conn: Conn, limit: int, lease_s: float) -> list[Push]:
    """Due pushes, leased for ``lease_s`` (concurrent workers skip them)."""
    rows = conn.execute(
        "WITH due AS (SELECT id FROM dicomweb_outbox WHERE delivered_at IS NULL AND dead_at IS NULL "
        "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
        "UPDATE dicomweb_outbox p SET next_attempt_at = now() + make_interval(secs => %s) FROM due "
        "WHERE p.id = due.id RETURNING p.id, p.job_id, p.client, p.url, p.keys, p.attempts",
        (limit, lease_s),
    ).fetchall()
    return [Push(**r) for r in rows]


def push_done(conn: Conn, push_id: int, status: int) -> None:
    conn.execute(
        "UPDATE dicomweb_outbox SET delivered_at = now(), attempts = attempts + 1, last_status = %s, "
        "last_error = NULL WHERE id = %s",
        (status, push_id),
    )


def push_retry(conn: Conn, push_id: int, status: int | None, error: str, delay_s: float | None) -> None:
    """A failed push: try again after ``delay_s`` seconds, or give up (``delay_s`` None)."""
    dead = delay_s is None
    conn.execute(
        "UPDATE dicomweb_outbox SET attempts = attempts + 1, last_status = %s, last_error = %s, "
        "next_attempt_at = now() + make_interval(secs => %s), dead_at = CASE WHEN %s THEN now() END "
        "WHERE id = %s",
        (status, error[:500], delay_s or 0.0, dead, push_id),
    )


def push_rows(conn: Conn, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The pushes of a job (for status pages and tests)."""
    return conn.execute(
        "SELECT id, url, attempts, delivered_at, dead_at, last_status, last_error FROM dicomweb_outbox "
        "WHERE job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()


@dataclass(frozen=True, slots=True)
class DicomwebImport:
    """Where an import job's study comes from (a configured source endpoint and the study's UIDs)."""

    job_id: uuid.UUID
    url: str
    study_uid: str
    series_uid: str | None


def insert_import(conn: Conn, imp: DicomwebImport) -> None:
    conn.execute(
        "INSERT INTO dicomweb_imports (job_id, url, study_uid, series_uid) VALUES (%s, %s, %s, %s)",
        (imp.job_id, imp.url, imp.study_uid, imp.series_uid),
    )


def get_import(conn: Conn, job_id: uuid.UUID) -> DicomwebImport | None:
    row = conn.execute(
        "SELECT job_id, url, study_uid, series_uid FROM dicomweb_imports WHERE job_id = %s", (job_id,)
    ).fetchone()
    return None if row is None else DicomwebImport(**row)


def attach_study(conn: Conn, job_id: uuid.UUID, attempt: int, study_id: uuid.UUID, sha256: str) -> bool:
    """Point the import job at its fetched study (guarded by the attempt); False if no longer held."""
    cur = conn.execute(
        "UPDATE jobs SET study_id = %s, study_sha256 = %s, updated_at = now() WHERE id = %s AND attempt = %s "
        "AND state = 'running'",
        (study_id, sha256, job_id, attempt),
    )
    return cur.rowcount > 0
