"""HeldJobs and InFlight (app/worker/context.py): the attempts a worker holds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.queue import JobMessage
from app.repository import Job
from app.worker.context import HeldJobs, InFlight


def test_held_jobs_track_attempts_across_threads(
    tmp_path: Path, job_row: Callable[..., dict[str, Any]]
) -> None:
    held = HeldJobs()
    jobs = [Job.from_row(job_row(state="running", attempt=n % 3 + 1)) for n in range(40)]
    items = [InFlight(job, JobMessage(f"{n}-0", None), tmp_path) for n, job in enumerate(jobs)]
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
