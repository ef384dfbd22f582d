"""Real resources for the hardening tests: a client's study and jobs in each state (real PG and S3).

The "succeeded" job is finished through the same repository calls a worker makes
(claim, result row, explanation row pointing at blobs written to S3 first), so the
API serves it exactly as it serves a worker's; no worker process is needed.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from dataclasses import dataclass
from typing import Any

import httpx
from conftest import LiveApi, new_key, storage_of  # type: ignore[import-not-found]

from app.db import connect
from app.repository import (
    BlobRef,
    ExplanationRecord,
    claim_job,
    finish_job,
    insert_result,
    upsert_explanation,
    worker_seen,
)
from app.schemas import JobResult

__all__ = [
    "Seeded",
    "create_job",
    "finish_failed",
    "finish_succeeded",
    "heartbeat",
    "seed_client",
    "small_zip",
    "upload",
]


@dataclass(frozen=True)
class Seeded:
    """One client's key and resources: ``jobs`` maps a state name to a job id."""

    client: str
    key: str
    study_id: str
    jobs: dict[str, str]
    blob_keys: list[str]


def small_zip(tag: str) -> bytes:
    """A ZIP the upload accepts (central directory is sane); its content is not DICOM."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{tag}.dcm", (tag * 64).encode())
    return buf.getvalue()


def upload(c: httpx.Client, data: bytes) -> str:
    r = c.post("/v1/studies", content=data, headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["study_id"])


def create_job(c: httpx.Client, study_id: str, explain: str = "gradcam") -> str:
    r = c.post("/v1/jobs", json={"study_id": study_id, "explain": explain})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _claim(conn: Any, job_id: str) -> int:
    job = claim_job(conn, uuid.UUID(job_id), "seed-worker", 60.0)
    assert job is not None, f"job {job_id} could not be claimed"
    return job.attempt


#: file extension → (bytes, content type) of a seeded blob
_FAKE = {
    "json": (b'{"max": 1.0}', "application/json"),
    "png": (b"\x89PNG\r\n\x1a\n", "image/png"),
    "gz": (b"\x1f\x8b\x08\x00", "application/gzip"),
}


def finish_succeeded(
    api: LiveApi, job_id: str, method: str = "gradcam", files: dict[str, str] | None = None
) -> list[str]:
    """Finish ``job_id`` as a worker would: blobs in S3, then result + explanation rows; returns blob keys.

    ``files``: role → file name of the explanation's blobs (default: a stats JSON and a PNG).
    """
    settings = api.settings
    assert settings.database_url
    storage = storage_of(settings)
    example: dict[str, Any] = JobResult.model_json_schema()["examples"][0]
    with connect(settings.database_url) as conn:
        attempt = _claim(conn, job_id)
        prefix = f"jobs/{job_id}/attempt-{attempt}/saliency"
        blobs = {
            role: (f"{prefix}/{name}", *_FAKE[name.rpartition(".")[2]])
            for role, name in (files or {"stats": "stats.json", "png": "ct.png"}).items()
        }
        for key, data, ctype in blobs.values():
            storage.put_bytes(key, data, ctype)
        with conn.transaction():
            assert finish_job(conn, uuid.UUID(job_id), attempt, timings={"total": 0.5}) is not None
            insert_result(conn, JobResult.model_validate({**example, "job_id": job_id, "attempt": attempt}))
            explanation = ExplanationRecord(
                job_id=uuid.UUID(job_id),
                method=method,
                produced_by=uuid.UUID(job_id),
                attempt=attempt,
                params={},
                stats={"max": 1.0},
                geometry={"shape_zyx": [4, 8, 8]},
                blobs={name: BlobRef(key, ctype) for name, (key, _, ctype) in blobs.items()},
                model_name=example["model"]["name"],
                model_version=example["model"]["version"],
            )
            upsert_explanation(conn, explanation)
    return [key for key, _, _ in blobs.values()]


def finish_failed(api: LiveApi, job_id: str, code: str = "no_dicom") -> None:
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        attempt = _claim(conn, job_id)
        job = finish_job(
            conn, uuid.UUID(job_id), attempt, timings={"total": 0.1}, error_code=code, error_detail="seeded"
        )
        assert job is not None


def heartbeat(api: LiveApi) -> None:
    """A fresh worker heartbeat row, so that ``/readyz`` is ready without a worker process."""
    assert api.settings.database_url
    with connect(api.settings.database_url) as conn:
        worker_seen(conn, "seed-worker", {"seeded": True})


def seed_client(api: LiveApi, client: str) -> Seeded:
    """A new client with a study, and predict jobs queued, succeeded (with explanation) and failed."""
    key = new_key(api.settings, client)
    with api.client(key) as c:
        study = upload(c, small_zip(f"{client}-{uuid.uuid4().hex[:8]}"))
        jobs = {state: create_job(c, study) for state in ("queued", "succeeded", "failed")}
    blob_keys = finish_succeeded(api, jobs["succeeded"])
    finish_failed(api, jobs["failed"])
    return Seeded(client=client, key=key, study_id=study, jobs=jobs, blob_keys=blob_keys)
