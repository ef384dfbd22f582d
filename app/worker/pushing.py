"""Pushes of DICOM results to the client's DICOMweb destination (STOW-RS), from the outbox.

A push row is queued in the transaction that finishes a job with written DICOM results
(:func:`app.repository.outcomes.mark_succeeded`). This thread of the worker takes due rows
(``FOR UPDATE SKIP LOCKED``), sends the objects in one STOW-RS request and records the
outcome: a non-2xx answer, a network error, or a 2xx answer that does not list every object
as stored (a PACS such as Orthanc answers 200 for instances it refused) is retried after
``backoff · 2^(n−1)`` seconds until ``S4CT_DICOMWEB_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import threading

import httpx

from app.config import Settings
from app.db import Conn, Database
from app.dicomweb import stow, stow_failures
from app.logs import logger
from app.outbox import OutboxSender, Retries, poll
from app.repository.dicom import Push, push_done, push_retry, push_take_due
from app.storage import Storage

__all__ = ["DicomPusher"]

_LEASE_S = 120.0


class DicomPusher(OutboxSender[Push]):
    """Delivers due pushes; :meth:`loop` is the worker's thread, :meth:`push_due` one round."""

    def __init__(self, db: Database, storage: Storage, settings: Settings) -> None:
        super().__init__(
            db,
            Retries(
                settings.dicomweb_max_attempts, settings.dicomweb_backoff_s, settings.dicomweb_backoff_max_s
            ),
        )
        self.storage, self.s = storage, settings
        self.pushed = 0

    def loop(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=self.s.dicomweb_timeout_s, follow_redirects=False) as http:
            poll(stop, lambda: self.push_due(http), lambda: stop.wait(0.5), "DICOMweb push error; going on")

    def push_due(self, http: httpx.Client, limit: int = 10) -> int:
        """Send every due push (up to ``limit``); how many were attempted."""
        with self.db.tx() as conn:
            rows = push_take_due(conn, limit, _LEASE_S)
        for row in rows:
            self._push(http, row)
        return len(rows)

    def _push(self, http: httpx.Client, row: Push) -> None:
        status: int | None = None
        try:
            files = [self.storage.get_bytes(k) for k in row.keys]
            resp = stow(http, row.url, files)
            status = resp.status_code
            error = None if 200 <= status < 300 else f"HTTP {status}"
            if error is None:
                failed = stow_failures(_json(resp), len(files))
                error = (
                    f"the PACS refused {len(failed)} instance(s): {', '.join(failed)[:300]}"
                    if failed
                    else None
                )
        except httpx.HTTPError as e:
            error = type(e).__name__
        self._record(row, status, error)

    def _succeeded(self, conn: Conn, row: Push, status: int | None) -> None:
        push_done(conn, row.id, status or 200)
        self.pushed += 1
        logger.info("DICOM results of job {} pushed ({} objects)", row.job_id, len(row.keys))

    def _retry(self, conn: Conn, row: Push, status: int | None, error: str, delay_s: float | None) -> None:
        push_retry(conn, row.id, status, error, delay_s)

    def _failed(self, row: Push, error: str, outcome: str) -> None:
        logger.warning("DICOMweb push {} of job {} failed ({}); {}", row.id, row.job_id, error, outcome)


def _json(resp: httpx.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return None
