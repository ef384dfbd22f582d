"""The fetch stage of an import job: the study comes from a PACS by WADO-RS, not from an upload.

The worker (never the API) retrieves the study, or the one series asked for, from the
client's configured source endpoint into the job's work directory as a study ZIP
(:class:`app.dicomweb.InstancePacker`: the same layout, limits and vetting as an upload),
stores it under ``studies/{id}/source.zip``, records the study (the same bytes from the same
client give the existing study) and points the job at it, guarded by the attempt. A PACS that
cannot deliver fails the job with ``dicomweb_fetch_failed``.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from pathlib import Path

import httpx

from app.dicomweb import wado_fetch
from app.logs import logger
from app.repository import insert_study
from app.repository.dicom import attach_study, get_import
from app.worker.context import InFlight, JobRefusedError, WorkerContext
from app.worker.retry import storage_retry
from ml.io import precheck_zip

__all__ = ["import_study"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(functools.partial(fh.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_study(ctx: WorkerContext, item: InFlight, zip_path: Path) -> bool:
    """Fetch the import job's study into ``zip_path`` and record it; False when the job is no import."""
    with ctx.db.conn() as conn:
        imp = get_import(conn, item.job_id)
    if imp is None:
        return False
    s = ctx.settings
    try:
        with httpx.Client(timeout=s.dicomweb_timeout_s, follow_redirects=False) as http:
            n = wado_fetch(
                http, imp.url, imp.study_uid, imp.series_uid, zip_path, max_bytes=s.max_upload_bytes
            )
    except httpx.HTTPStatusError as e:
        raise JobRefusedError(
            "dicomweb_fetch_failed", f"the PACS answered HTTP {e.response.status_code}"
        ) from None
    except httpx.HTTPError as e:
        raise JobRefusedError(
            "dicomweb_fetch_failed", f"the PACS is unreachable ({type(e).__name__})"
        ) from None
    with zip_path.open("rb") as fh:
        summary = precheck_zip(fh)
    sha, size = _sha256(zip_path), zip_path.stat().st_size
    study_id = uuid.uuid4()
    key = f"studies/{study_id}/source.zip"
    storage_retry(
        "store the imported study",
        functools.partial(ctx.storage.put_file, key, zip_path, "application/zip"),
        retry_s=s.storage_retry_s,
        stop=ctx.stop_event,
    )
    with ctx.db.tx() as conn:
        row, created = insert_study(
            conn,
            study_id=study_id,
            client=item.job.client,
            sha256=sha,
            size_bytes=size,
            s3_key=key,
            members=summary.files,
            uncompressed_bytes=summary.uncompressed_bytes,
        )
        held = attach_study(conn, item.job_id, item.attempt, row["id"], sha)
    if not created or not held:
        ctx.storage.delete(key)
    if not held:
        raise JobRefusedError("worker_crashed", "the attempt was superseded while importing")
    logger.info("job {}: study {} imported by WADO-RS ({} instances)", item.job_id, row["id"], n)
    return True
