"""HeldJobs and InFlight (app/worker/context.py): the attempts a worker holds."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path

from app.queue import JobMessage
from app.repository import Job
from app.worker.context import HeldJobs, InFlight

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def claimed(attempt: int) -> Job:
    return Job(
        id=uuid.uuid4(),
        client="site-a",
        study_id=uuid.uuid4(),
        study_sha256="ab" * 32,
        kind="predict",
        parent_job_id=None,
        model="resnet10-demo",
        series_uid=None,
        explain="none",
        explain_params={},
        callback_url=None,
        state="running",
        stage="fetching",
        progress=0.0,
        attempt=attempt,
        max_attempts=3,
        worker_id="w",
        lease_until=NOW,
        heartbeat_at=NOW,
        enqueued_at=NOW,
        error_code=None,
        error_detail=None,
        stage_timings={},
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        updated_at=NOW,
        study_s3_key="studies/x/source.zip",
    )


def test_held_jobs_track_attempts_across_threads(tmp_path: Path) -> None:
    held = HeldJobs()
    items = [InFlight(claimed(n % 3 + 1), JobMessage(f"{n}-0", None), tmp_path) for n in range(40)]
    threads = [threading.Thread(target=held.add, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 40 and items[0].job_id in held
    assert sorted(held.attempts()) == sorted((i.job.id, i.job.attempt) for i in items)
    assert items[5].attempt == items[5].job.attempt and items[5].job_id == items[5].job.id
    held.remove(items[0].job_id)
    held.remove(items[0].job_id)  # twice: no error
    assert items[0].job_id not in held and len(held) == 39
    taken = held.take_all()
    assert len(taken) == 39 and not held and held.attempts() == []
