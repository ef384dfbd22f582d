"""The retention janitor and the object-store sweeps of deletions (docs/api.md, Retention and deletion).

:func:`retention_pass` deletes, in batches, the studies and jobs older than their client's
retention (``clients.retention_days``, else the ``retention_days`` setting; neither: kept),
then :func:`sweep_due` deletes the S3 objects the deletions left to sweep. Both are
idempotent and safe with several workers (rows taken with ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.config import Settings
from app.db import Conn, Database
from app.logs import logger
from app.repository.retention import (
    Prefixes,
    delete_jobs,
    delete_studies,
    expired_jobs,
    expired_studies,
    sweep_done,
    take_sweeps,
)
from app.storage import Storage, StorageError

__all__ = ["RetentionCounts", "retention_pass", "sweep_after_s", "sweep_due", "sweep_now", "sweep_prefix"]

#: batches of one kind in one pass (the next pass goes on)
_MAX_BATCHES = 50


def sweep_after_s(settings: Settings) -> float:
    """When a deletion's prefixes are swept again: after any attempt still writing there has
    lost its lease and given up retrying the object store."""
    return 2 * settings.lease_s + settings.storage_retry_s


def sweep_prefix(storage: Storage, prefix: str, names: Iterable[str] | None = None) -> int:
    """Delete every object under ``prefix`` (or only those whose file name is in ``names``)."""
    if names is None:
        return storage.delete_prefix(prefix)
    wanted = set(names)
    keys = [k for k in storage.list_keys(prefix) if posixpath.basename(k) in wanted]
    for key in keys:
        storage.delete(key)
    return len(keys)


def sweep_now(storage: Storage, prefixes: Prefixes) -> None:
    """The immediate pass of a deletion (a failure is left to the janitor's pass)."""
    for prefix, names in prefixes:
        try:
            sweep_prefix(storage, prefix, names)
        except StorageError as e:
            logger.warning("deletion: object store failed ({}); the janitor deletes {} later", e.code, prefix)


def sweep_due(db: Database, storage: Storage, batch: int) -> int:
    """Run the due sweeps, ``batch`` at a time; returns how many were completed."""
    done = 0
    for _ in range(_MAX_BATCHES):
        with db.conn() as conn:
            sweeps = take_sweeps(conn, batch)
        for sw in sweeps:
            try:
                sweep_prefix(storage, sw.prefix, sw.names)
            except StorageError as e:
                logger.warning("janitor: sweeping {} failed ({}); retried later", sw.prefix, e.code)
                continue
            with db.conn() as conn:
                sweep_done(conn, sw)
            done += 1
        if len(sweeps) < batch:
            break
    return done


@dataclass(frozen=True)
class RetentionCounts:
    studies: int = 0
    jobs: int = 0
    sweeps: int = 0


def _expire(
    db: Database,
    storage: Storage,
    pick: Callable[[Conn, int | None, int], list[uuid.UUID]],
    delete: Callable[[Conn, list[uuid.UUID], float], Prefixes],
    settings: Settings,
) -> int:
    total = 0
    for _ in range(_MAX_BATCHES):
        with db.tx() as conn:
            ids = pick(conn, settings.retention_days, settings.retention_batch)
            prefixes = delete(conn, ids, sweep_after_s(settings)) if ids else []
        sweep_now(storage, prefixes)
        total += len(ids)
        if len(ids) < settings.retention_batch:
            break
    return total


def retention_pass(db: Database, storage: Storage, settings: Settings) -> RetentionCounts:
    """Delete what is past its retention (jobs first, then studies), then run the due sweeps.

    The deleted rows' objects are deleted at once, and every prefix again after :func:`sweep_after_s`.
    """
    jobs = _expire(db, storage, expired_jobs, delete_jobs, settings)
    studies = _expire(db, storage, expired_studies, delete_studies, settings)
    if jobs or studies:
        logger.info("retention: deleted {} job(s) and {} stud(ies)", jobs, studies)
    sweeps = sweep_due(db, storage, settings.retention_batch)
    return RetentionCounts(studies=studies, jobs=jobs, sweeps=sweeps)
