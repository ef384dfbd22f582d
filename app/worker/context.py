"""What the parts of one worker share: its connections and settings, and the jobs it holds.

One :class:`InFlight` per claimed attempt, in the thread-safe :class:`HeldJobs`.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings
from app.db import Database
from app.metrics import WorkerMetrics
from app.queue import JobMessage, JobQueue
from app.repository import Job
from app.storage import Storage

__all__ = ["AttemptLostError", "HeldJobs", "InFlight", "JobRefusedError", "WorkerContext"]


class AttemptLostError(Exception):
    """The attempt is no longer this worker's: the job was cancelled, or another attempt took it over.

    Raised at a stage boundary; the work stops there and nothing more is stored for it.
    """


class JobRefusedError(Exception):
    """A refusal found by the worker itself (not by ``ml/``), with a stable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass
class InFlight:
    """A job held by this worker: the claimed attempt, its stream entry and its work directory."""

    job: Job
    message: JobMessage
    workdir: Path
    t_claimed: float = field(default_factory=time.perf_counter)
    pool_generation: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt


class HeldJobs:
    """The attempts this worker holds, by job id (shared by its threads)."""

    def __init__(self) -> None:
        self._items: dict[uuid.UUID, InFlight] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, job_id: uuid.UUID) -> bool:
        return job_id in self._items

    def add(self, item: InFlight) -> None:
        with self._lock:
            self._items[item.job_id] = item

    def remove(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._items.pop(job_id, None)

    def attempts(self) -> list[tuple[uuid.UUID, int]]:
        """(job id, attempt) of every held job (what the heartbeat extends)."""
        with self._lock:
            return [(i.job_id, i.attempt) for i in self._items.values()]

    def take_all(self) -> list[InFlight]:
        """Empty the registry; returns what it held."""
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return items


@dataclass(frozen=True)
class WorkerContext:
    """The settings, connections, held jobs, metrics and stop signal of one worker."""

    settings: Settings
    worker_id: str
    db: Database
    storage: Storage
    jobs: JobQueue
    held: HeldJobs
    metrics: WorkerMetrics
    stop_event: threading.Event
