"""Query parameters shared by the list routes (``GET /v1/jobs``, ``GET /v1/studies``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Query
from pydantic import BeforeValidator

from app.schemas import NO_CONTROL

__all__ = ["ClientRefQ", "CreatedAfter", "CreatedBefore", "Cursor", "IsoTime", "Limit", "utc"]


def utc(v: dt.datetime | None) -> dt.datetime | None:
    """A query's time, UTC when it names no offset."""
    return v.replace(tzinfo=dt.UTC) if v is not None and v.tzinfo is None else v


Limit = Annotated[int, Query(ge=1, le=200, description="items per page (at most 200)")]
Cursor = Annotated[
    str | None, Query(max_length=512, description="`next_cursor` of the previous page (omit for the first)")
]


def _iso(v: object) -> object:
    """An ISO 8601 date and time only (pydantic would also read a number as a Unix time)."""
    if not isinstance(v, str):
        return v
    if len(v) < 16 or v[10] not in "Tt ":
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-11-23T10:00:00Z")
    return dt.datetime.fromisoformat(v)


IsoTime = Annotated[dt.datetime, BeforeValidator(_iso)]
CreatedAfter = Annotated[
    IsoTime | None, Query(description="created at or after (ISO 8601; UTC if no offset)")
]
CreatedBefore = Annotated[IsoTime | None, Query(description="created before (ISO 8601; UTC if no offset)")]
ClientRefQ = Annotated[
    str | None, Query(max_length=128, pattern=NO_CONTROL, description="only rows with this client_ref")
]
