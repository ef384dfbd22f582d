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
from app.db import Database
from app.dicomweb import stow, stow_failures
from app.logs import logger
from app.repository.dicom import Push, push_done, push_retry, push_take_due
from app.storage import Storage
from app.webhooks import backoff_s

__all__ = ["DicomPusher"]

_LEASE_S = 120.0


class DicomPusher:
    """Delivers due pushes; :meth:`loop` is the worker's thread, :meth:`push_due` one round."""

    def __init__(self, db: Database, storage: Storage, settings: Settings) -> None:
        self.db, self.storage, self.s = db, storage, settings
        self.pushed = 0

    def loop(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=self.s.dicomweb_timeout_s, follow_redirects=False) as http:
            while not stop.is_set():
                try:
                    n = self.push_due(http)
                except Exception:
                    logger.exception("DICOMweb push error; going on")
                    n = 0
                if n == 0:
                    stop.wait(0.5)

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
        attempts = row.attempts + 1
        with self.db.conn() as conn:
            if error is None:
                push_done(conn, row.id, status or 200)
                self.pushed += 1
                logger.info("DICOM results of job {} pushed ({} objects)", row.job_id, len(row.keys))
                return
            delay = (
                None
                if attempts >= self.s.dicomweb_max_attempts
                else backoff_s(attempts, self.s.dicomweb_backoff_s, self.s.dicomweb_backoff_max_s)
            )
            push_retry(conn, row.id, status, error, delay)
        logger.warning(
            "DICOMweb push {} of job {} failed ({}); {}",
            row.id,
            row.job_id,
            error,
            "giving up" if delay is None else f"retry in {delay:.0f} s",
        )


def _json(resp: httpx.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return None
