"""storage_retry (app/worker/retry.py): object-store outages retried, then a stable refusal."""

from __future__ import annotations

import threading
import time

import pytest

from app.storage import ObjectNotFoundError, StorageError
from app.worker.context import JobRefusedError
from app.worker.retry import storage_retry


def flaky(failures: int, error: StorageError) -> tuple[list[float], object]:
    calls: list[float] = []

    def call() -> str:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise error
        return "ok"

    return calls, call


def test_an_outage_shorter_than_the_budget_is_ridden_out() -> None:
    calls, call = flaky(2, StorageError("down", code="ConnectError"))
    assert storage_retry("fetch", call, retry_s=10.0, stop=threading.Event()) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 3 and calls[2] - calls[1] >= 0.9 * (calls[1] - calls[0]) * 2  # backoff doubles


def test_a_long_outage_refuses_the_job_with_storage_unavailable() -> None:
    calls, call = flaky(100, StorageError("down", code="ConnectError"))
    with pytest.raises(JobRefusedError) as err:
        storage_retry("fetch the study", call, retry_s=0.6, stop=threading.Event())  # type: ignore[arg-type]
    assert err.value.code == "storage_unavailable" and "could not fetch the study" in err.value.detail
    assert "ConnectError" in err.value.detail and len(calls) >= 2


def test_missing_objects_and_stopping_workers_are_not_retried() -> None:
    calls, call = flaky(100, ObjectNotFoundError("gone", code="NoSuchKey"))
    with pytest.raises(ObjectNotFoundError):
        storage_retry("fetch", call, retry_s=10.0, stop=threading.Event())  # type: ignore[arg-type]
    assert len(calls) == 1
    stop = threading.Event()
    stop.set()
    calls, call = flaky(100, StorageError("down", code="ConnectError"))
    with pytest.raises(StorageError):
        storage_retry("fetch", call, retry_s=10.0, stop=stop)  # type: ignore[arg-type]
    assert len(calls) == 1
