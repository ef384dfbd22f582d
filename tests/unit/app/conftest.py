"""Fixtures of the app unit tests."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

_MADE = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def _job_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "client": "site-a",
        "study_id": uuid.uuid4(),
        "study_sha256": "ab" * 32,
        "kind": "predict",
        "parent_job_id": None,
        "model": "resnet10-demo",
        "series_uid": None,
        "explain": "gradcam",
        "explain_params": {},
        "callback_url": None,
        "state": "queued",
        "stage": None,
        "progress": 0.0,
        "attempt": 0,
        "max_attempts": 3,
        "worker_id": None,
        "lease_until": None,
        "heartbeat_at": None,
        "enqueued_at": _MADE,
        "error_code": None,
        "error_detail": None,
        "stage_timings": {},
        "created_at": _MADE,
        "started_at": None,
        "finished_at": None,
        "updated_at": _MADE,
    }
    return row | over


@pytest.fixture()
def job_row() -> Callable[..., dict[str, Any]]:
    """``job_row(**columns)``: a ``jobs`` row as psycopg returns it, made 2026-11-23 10:00 UTC."""
    return _job_row
