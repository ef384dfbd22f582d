"""Pages of a client's jobs and studies: filters and keyset pagination (newest first).

The order is ``(created_at DESC, id DESC)`` and a cursor is the position of the last row
served, so a page starts strictly after it: rows inserted while a client pages (newer
than the first page) never shift later pages, and no row is served twice or skipped.
Cursors are opaque to clients (URL-safe base64 of the position and the list it belongs to).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from app.db import Conn
from app.repository.jobs import JOB_COLS, QUEUE_POSITION
from app.repository.records import Job, Row
from app.repository.studies import STUDY_COLS

__all__ = ["JobFilter", "Page", "StudyFilter", "decode_cursor", "encode_cursor", "list_jobs", "list_studies"]


def encode_cursor(kind: str, created_at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([kind, created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """The position a cursor of list ``kind`` names; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, at, row_id = orjson.loads(raw)
        created = dt.datetime.fromisoformat(at)
        if tag != kind or created.tzinfo is None:
            raise ValueError
        return created, uuid.UUID(row_id)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        raise ValueError("invalid cursor (pass next_cursor of the previous page as is)") from None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page: its rows and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class StudyFilter:
    client_ref: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None


@dataclass(frozen=True)
class JobFilter(StudyFilter):
    states: Sequence[str] = ()
    study_id: uuid.UUID | None = None
    label: str | None = None
    priority: str | None = None
    #: "any": jobs with feedback; "none": jobs without
    feedback: str | None = None
    #: the consensus ground truth of the readers' current answers (``feedback_consensus``)
    ground_truth: str | None = None


def _common(
    alias: str, f: StudyFilter, cursor: tuple[dt.datetime, uuid.UUID] | None
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if f.client_ref is not None:
        where.append(f"{alias}.client_ref = %s")
        params.append(f.client_ref)
    if f.created_after is not None:
        where.append(f"{alias}.created_at >= %s")
        params.append(f.created_after)
    if f.created_before is not None:
        where.append(f"{alias}.created_at < %s")
        params.append(f.created_before)
    if cursor is not None:
        where.append(f"({alias}.created_at, {alias}.id) < (%s, %s)")
        params.extend(cursor)
    return "".join(f" AND {w}" for w in where), params


def _page(kind: str, rows: list[Row], limit: int, make: Any) -> Page[Any]:
    items = [make(r) for r in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return Page(items, encode_cursor(kind, last["created_at"], last["id"]) if last is not None else None)


def list_jobs(conn: Conn, client: str, f: JobFilter, limit: int, cursor: str | None) -> Page[Job]:
    """A page of ``client``'s jobs with their queue positions and result labels."""
    where, params = _common("j", f, decode_cursor("jobs", cursor) if cursor else None)
    if f.states:
        where += " AND j.state = ANY(%s)"
        params.append(list(f.states))
    if f.study_id is not None:
        where += " AND j.study_id = %s"
        params.append(f.study_id)
    if f.label is not None:
        where += " AND r.label = %s"
        params.append(f.label)
    if f.priority is not None:
        where += " AND j.priority = %s"
        params.append(f.priority)
    if f.feedback is not None:
        negate = "NOT " if f.feedback == "none" else ""
        where += f" AND {negate}EXISTS (SELECT 1 FROM feedback fb WHERE fb.job_id = j.id AND fb.current)"
    if f.ground_truth is not None:
        where += " AND j.id IN (SELECT c.job_id FROM feedback_consensus c WHERE c.ground_truth = %s)"
        params.append(f.ground_truth)
    rows = conn.execute(
        (
            f"SELECT {JOB_COLS}, r.label, {QUEUE_POSITION} FROM jobs j "
            f"LEFT JOIN results r ON r.job_id = j.id WHERE j.client = %s{where} "
            "ORDER BY j.created_at DESC, j.id DESC LIMIT %s"
        ).encode(),
        [client, *params, limit + 1],
    ).fetchall()
    return _page("jobs", rows, limit, Job.from_row)


def list_studies(conn: Conn, client: str, f: StudyFilter, limit: int, cursor: str | None) -> Page[Row]:
    """A page of ``client``'s studies (rows of ``studies``)."""
    where, params = _common("s", f, decode_cursor("studies", cursor) if cursor else None)
    cols = ", ".join(f"s.{c.strip()}" for c in STUDY_COLS.split(","))
    rows = conn.execute(
        (
            f"SELECT {cols} FROM studies s WHERE s.client = %s{where} "
            "ORDER BY s.created_at DESC, s.id DESC LIMIT %s"
        ).encode(),
        [client, *params, limit + 1],
    ).fetchall()
    return _page("studies", rows, limit, dict)
