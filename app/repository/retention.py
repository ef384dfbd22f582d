"""Deleting studies and jobs (by a client, or by the retention janitor) and the object-store
sweeps that follow (docs/api.md, Retention and deletion).

A deletion removes the rows and records, in the same transaction, the S3 prefixes still to
delete (``blob_sweeps``). The caller deletes them at once; every worker's janitor sweeps each
prefix again once ``not_before`` has passed (an attempt still writing when its job or study
was deleted, an object store that failed the first time) and then forgets it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from app.db import Conn
from app.repository.events import study_deleted
from ml.explain.params import CT_PIXEL_FILES

__all__ = [
    "KEEP",
    "Prefixes",
    "Sweep",
    "delete_jobs",
    "delete_studies",
    "expired_jobs",
    "expired_studies",
    "get_retention",
    "remove_job",
    "remove_study",
    "set_retention",
    "sweep_done",
    "take_sweeps",
]

#: :func:`set_retention`: keep the client's studies and jobs until they are deleted
KEEP: Final = 0
_ACTIVE = ("queued", "running")
#: a sweep taken by a janitor is its own for this long (then another may take it again)
SWEEP_LEASE_S: Final = 600.0


@dataclass(frozen=True)
class Sweep:
    """S3 objects still to delete: every object under ``prefix``, or those named ``names``."""

    id: int
    prefix: str
    names: tuple[str, ...] | None

    @property
    def job_id(self) -> uuid.UUID | None:
        """The job whose blobs these are (None for a study's prefix)."""
        kind, _, rest = self.prefix.partition("/")
        return uuid.UUID(rest.rstrip("/")) if kind == "jobs" else None


#: what a deletion left to delete in the object store: (prefix, file names or None for all)
Prefixes = list[tuple[str, tuple[str, ...] | None]]


def _add_sweeps(conn: Conn, prefixes: Iterable[str], names: Iterable[str] | None, after_s: float) -> Prefixes:
    picked = tuple(sorted(names)) if names is not None else None
    out: Prefixes = [(p, picked) for p in prefixes]
    if out:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO blob_sweeps (prefix, names, not_before) "
                "VALUES (%s, %s, now() + make_interval(secs => %s))",
                [(p, list(n) if n is not None else None, after_s) for p, n in out],
            )
    return out


def strip_blobs(conn: Conn, job_ids: Sequence[uuid.UUID], names: Iterable[str]) -> None:
    """Remove the files named ``names`` from the explanations of, or produced by, ``job_ids``."""
    conn.execute(
        "UPDATE explanations e SET blobs = COALESCE((SELECT jsonb_object_agg(b.k, b.v) "
        " FROM jsonb_each(e.blobs) AS b(k, v) WHERE NOT regexp_replace(b.v->>'key', '^.*/', '') = ANY(%s)),"
        " '{}'::jsonb) WHERE e.job_id = ANY(%s) OR e.produced_by = ANY(%s)",
        (sorted(names), list(job_ids), list(job_ids)),
    )


def delete_studies(conn: Conn, ids: Sequence[uuid.UUID], sweep_after_s: float) -> Prefixes:
    """Delete studies (rows locked by the caller) with their ZIPs and the CT-pixel images of their jobs;
    each sends ``study.deleted``.

    The jobs keep their results and the images without CT pixels (saliency NIfTI and layers).
    """
    jobs = [
        r["id"] for r in conn.execute("SELECT id FROM jobs WHERE study_id = ANY(%s)", (list(ids),)).fetchall()
    ]
    strip_blobs(conn, jobs, CT_PIXEL_FILES)
    deleted = conn.execute(
        "DELETE FROM studies WHERE id = ANY(%s) RETURNING id, client, sha256, client_ref, metadata",
        (list(ids),),
    ).fetchall()
    for row in deleted:
        study_deleted(conn, row)  # the study.deleted event, in the deleting transaction
    return _add_sweeps(conn, (f"studies/{i}/" for i in ids), None, sweep_after_s) + _add_sweeps(
        conn, (f"jobs/{j}/" for j in jobs), CT_PIXEL_FILES, sweep_after_s
    )


def remove_study(conn: Conn, client: str, study_id: uuid.UUID, sweep_after_s: float) -> Prefixes | None:
    """Delete ``client``'s study (:func:`delete_studies`) in the caller's transaction; None if not found."""
    row = conn.execute(
        "SELECT id FROM studies WHERE id = %s AND client = %s FOR UPDATE", (study_id, client)
    ).fetchone()
    return None if row is None else delete_studies(conn, [study_id], sweep_after_s)


def delete_jobs(conn: Conn, ids: Sequence[uuid.UUID], sweep_after_s: float) -> Prefixes:
    """Delete jobs (rows locked by the caller) with their explain jobs, results, explanations and
    blobs."""
    children = conn.execute("SELECT id FROM jobs WHERE parent_job_id = ANY(%s)", (list(ids),)).fetchall()
    every = [*ids, *(r["id"] for r in children)]
    # an explain job's saliency is a row of its parent's: it goes with the job that produced it
    conn.execute("DELETE FROM explanations WHERE produced_by = ANY(%s)", (every,))
    conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (every,))  # results, outbox: ON DELETE CASCADE
    return _add_sweeps(conn, (f"jobs/{j}/" for j in every), None, sweep_after_s)


def remove_job(
    conn: Conn, client: str, job_id: uuid.UUID, sweep_after_s: float
) -> Prefixes | Literal["active"] | None:
    """Delete ``client``'s finished job (:func:`delete_jobs`) in the caller's transaction.

    ``active``: the job is queued or running (nothing deleted); None: no such job.
    """
    row = conn.execute(
        "SELECT state FROM jobs WHERE id = %s AND client = %s FOR UPDATE", (job_id, client)
    ).fetchone()
    if row is None:
        return None
    if row["state"] in _ACTIVE:
        return "active"
    return delete_jobs(conn, [job_id], sweep_after_s)


_EXPIRED = (
    "JOIN clients c ON c.name = {t}.client "
    "WHERE COALESCE(c.retention_days, %(days)s, 0) > 0 "
    "AND {t}.created_at < now() - make_interval(days => COALESCE(c.retention_days, %(days)s)) "
)


def expired_studies(conn: Conn, default_days: int | None, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` studies past their client's retention, locked (SKIP LOCKED: janitors share
    work); a study with a queued or running job waits for it to finish."""
    rows = conn.execute(
        "SELECT s.id FROM studies s " + _EXPIRED.format(t="s") + "AND NOT EXISTS (SELECT 1 FROM jobs k "
        " WHERE k.study_id = s.id AND k.state IN ('queued', 'running')) "
        "ORDER BY s.created_at LIMIT %(limit)s FOR UPDATE OF s SKIP LOCKED",
        {"days": default_days, "limit": limit},
    ).fetchall()
    return [r["id"] for r in rows]


def expired_jobs(conn: Conn, default_days: int | None, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` predict jobs past their client's retention, locked; a job that is queued or
    running, or whose explain job is, waits for it to finish."""
    rows = conn.execute(
        "SELECT j.id FROM jobs j " + _EXPIRED.format(t="j") + "AND j.kind = 'predict' "
        "AND j.state NOT IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM jobs k "
        " WHERE k.parent_job_id = j.id AND k.state IN ('queued', 'running')) "
        "ORDER BY j.created_at LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED",
        {"days": default_days, "limit": limit},
    ).fetchall()
    return [r["id"] for r in rows]


def take_sweeps(conn: Conn, limit: int) -> list[Sweep]:
    """Up to ``limit`` due sweeps, each this caller's for :data:`SWEEP_LEASE_S` (then due again)."""
    rows = conn.execute(
        "UPDATE blob_sweeps SET not_before = now() + make_interval(secs => %s), attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM blob_sweeps WHERE not_before <= now() ORDER BY not_before "
        " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, prefix, names",
        (SWEEP_LEASE_S, limit),
    ).fetchall()
    return [Sweep(r["id"], r["prefix"], tuple(r["names"]) if r["names"] is not None else None) for r in rows]


def sweep_done(conn: Conn, sweep: Sweep) -> None:
    """Forget a sweep whose objects are deleted; a partial one also strips its job's explanations
    (an attempt may have stored one after the study was deleted)."""
    with conn.transaction():
        if sweep.names is not None and sweep.job_id is not None:
            strip_blobs(conn, [sweep.job_id], sweep.names)
        conn.execute("DELETE FROM blob_sweeps WHERE id = %s", (sweep.id,))


def get_retention(conn: Conn, client: str) -> tuple[bool, int | None]:
    """(client exists, its own retention days: None = the service's default, 0 = keep)."""
    row = conn.execute("SELECT retention_days FROM clients WHERE name = %s", (client,)).fetchone()
    return (False, None) if row is None else (True, row["retention_days"])


def set_retention(conn: Conn, client: str, days: int | None) -> bool:
    """Set ``client``'s retention (None: the default, :data:`KEEP`: keep); False if no such client."""
    if days is not None and days < 0:
        raise ValueError(f"retention days must be >= 0 or None, got {days}")
    row = conn.execute(
        "UPDATE clients SET retention_days = %s WHERE name = %s RETURNING name", (days, client)
    ).fetchone()
    return row is not None
