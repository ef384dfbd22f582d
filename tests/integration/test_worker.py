"""End to end: upload → job → real worker (demo model on CPU) → result, saliency, webhook.

One worker serves the whole module (starting it spawns the preprocessing
process and loads the model once, as in production).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from conftest import LiveApi, Receiver, list_keys, new_key, storage_of, wait_for, wait_job  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.repository import webhook_secret
from app.schemas import JobResult, JobStatus
from app.webhooks import SIGNATURE_HEADER, verify
from app.worker.runner import Worker
from ml.phantom import PHI_IDENTIFIERS, make_study


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return new_key(settings, "site-e2e")


@pytest.fixture(scope="module")
def client(api: LiveApi, key: str) -> Iterator[httpx.Client]:
    with api.client(key) as c:
        yield c


def _upload_file(c: httpx.Client, path: Path) -> str:
    r = c.post("/v1/studies", content=path.read_bytes(), headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    sid: str = r.json()["study_id"]
    return sid


def _study_row(client: httpx.Client, settings: Settings, tmp_path: Path, seed: int) -> Any:
    """A phantom study uploaded through the API, as its ``studies`` row."""
    zp = tmp_path / f"s{seed}.zip"
    make_study(zp, seed=seed)
    sid = _upload_file(client, zp)
    assert settings.database_url
    with connect(settings.database_url) as conn:
        return conn.execute("SELECT * FROM studies WHERE id = %s", (uuid.UUID(sid),)).fetchone()


def _insert_job(
    conn: Any,
    study: Any,
    *,
    explain: str = "none",
    explain_params: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> Any:
    """A job of client site-e2e written straight to PostgreSQL (past the API's checks)."""
    from app.repository import insert_job

    return insert_job(
        conn,
        client="site-e2e",
        study=study,
        model="resnet10-demo",
        series_uid=None,
        explain=explain,
        explain_params=explain_params or {},
        callback_url=None,
        max_attempts=max_attempts,
    )


def _zip_bytes(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for n, d in files.items():
            z.writestr(n, d)
    return buf.getvalue()


def test_end_to_end_with_saliency_and_webhook(
    client: httpx.Client, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    zp = tmp_path / "s.zip"
    # on the demo model's training grid: a study its OOD statistics know (others may be indeterminate)
    grid: dict[str, Any] = {"rows": 128, "cols": 128, "pixel_spacing_mm": 3.0, "slice_spacing_mm": 2.5}
    info = make_study(zp, seed=21, label=1, difficulty=(0.9, 1.0), **grid)
    sid = _upload_file(client, zp)
    with Receiver() as hook:
        r = client.post(
            "/v1/jobs",
            json={"study_id": sid, "explain": "gradcam", "callback_url": hook.url},
            headers={"Idempotency-Key": "e2e-1"},
        )
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        status = wait_job(client, job)
        assert status["state"] == "succeeded", status
        JobStatus.model_validate(status)
        JobResult.model_validate(client.get(f"/v1/jobs/{job}/result").json())
        assert status["attempt"] == 1 and status["progress"] == 1.0 and status["eta_s"] == 0.0
        for stage in ("fetching", "reading", "qc", "preprocessing", "inference", "explaining", "saving"):
            assert stage in status["stage_timings"], stage
        # the prepared study came back through shared memory files, each unlinked once mapped
        assert list(Path(settings.handoff_dir).iterdir()) == []

        result = client.get(f"/v1/jobs/{job}/result").json()
        assert 0.0 <= result["probability"] <= 1.0
        assert result["label"] in ("normal", "pathology")
        assert set(result["decision"]) == set(result["operating_points"])
        assert result["model"]["name"] == "resnet10-demo" and len(result["model"]["sha256"]) == 64
        assert result["not_for_clinical_use"] is True
        assert result["series"]["selected_uid"] == info.primary_series_uid
        assert result["timings"]["total"] > 0

        expl = client.get(f"/v1/jobs/{job}/explanation").json()
        assert expl["method"] == "gradcam"
        # no composite sprite: the viewer layers show the same slices
        assert set(expl["files"]) == {
            "nifti",
            "stats_json",
            "peak_png",
            "ct_layer",
            "saliency_layer",
            "heat_layer",
        }
        assert expl["stats"]["nifti"]["dtype"] == "uint8" and expl["params"]["nifti"] == "uint8"
        nifti = httpx.get(expl["files"]["nifti"]["url"])  # presigned: no API key needed
        assert nifti.status_code == 200
        img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
        rows, cols, slices = img.shape
        assert (slices, rows, cols) == tuple(expl["geometry"]["shape_zyx"]) or (
            (rows, cols, slices) == tuple(expl["geometry"]["shape_zyx"])
        )
        assert img.get_data_dtype() == np.uint8  # 8 bits, scl_slope/scl_inter applied by the readers
        assert np.isfinite(np.asarray(img.dataobj)).all()
        assert float(np.asarray(img.dataobj).max()) == pytest.approx(expl["stats"]["max"], rel=1 / 255)
        assert "max" in expl["stats"]
        # masked to the body in the worker: the share of attribution outside it is recorded
        assert 0.0 <= expl["stats"]["outside_body_fraction"] <= 1.0

        # the signed webhook arrives once, for the finished job
        wait_for(lambda: hook.requests, timeout=30, what="webhook")
        req = hook.requests[0]
        assert verify(_secret(settings), req["body"], req["headers"][SIGNATURE_HEADER])
        payload = hook.payloads()[0]
        assert payload["event"] == "job.succeeded" and payload["job_id"] == job
        assert payload["probability"] == pytest.approx(result["probability"])
        assert payload["label"] == result["label"] and payload["indeterminate_reasons"] == []
    # saliency blobs (and the DICOM results) live under attempt-scoped keys
    keys = list(list_keys(storage_of(settings), f"jobs/{job}/"))
    assert keys and all(k.startswith(f"jobs/{job}/attempt-1/saliency/") for k in keys if "/dicom/" not in k)
    assert {k for k in keys if "/dicom/" in k} <= {
        f"jobs/{job}/attempt-1/dicom/{n}.dcm" for n in ("sr", "sc", "seg")
    }

    # explain again with another method: a new explain job, the explanation is added
    # (with the full-precision float32 NIfTI, on request)
    r = client.post(f"/v1/jobs/{job}/explain", json={"method": "saliency", "params": {"nifti": "float32"}})
    assert r.status_code == 202, r.text
    ej = r.json()["job_id"]
    assert wait_job(client, ej)["state"] == "succeeded"
    sal = client.get(f"/v1/jobs/{job}/explanation", params={"method": "saliency"}).json()
    assert sal["method"] == "saliency" and sal["stats"]["nifti"]["dtype"] == "float32"
    exact = nib.Nifti1Image.from_bytes(gzip.decompress(httpx.get(sal["files"]["nifti"]["url"]).content))
    assert exact.get_data_dtype() == np.float32
    assert (
        client.get(f"/v1/jobs/{job}/explanation", params={"method": "gradcam"}).json()["method"] == "gradcam"
    )
    assert client.get(f"/v1/jobs/{ej}/explanation").json()["method"] == "saliency"

    # deleting the study keeps the job's result
    assert client.delete(f"/v1/studies/{sid}").status_code == 204
    assert client.get(f"/v1/jobs/{job}/result").json()["probability"] == result["probability"]


def _secret(settings: Settings) -> str:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        row = conn.execute("SELECT webhook_secret FROM clients WHERE name = 'site-e2e'").fetchone()
    assert row is not None
    return str(row["webhook_secret"])


def test_bad_studies_fail_with_their_code_and_the_worker_goes_on(
    client: httpx.Client, worker: Worker, tmp_path: Path
) -> None:
    # passes the upload precheck (central directory fine) but fails in the worker
    no_dicom = _zip_bytes({"notes/readme.txt": b"hello", "x/y.bin": b"\x00" * 300})
    make_study(tmp_path / "ok.zip", seed=22, label=0)
    mr = tmp_path / "mr.zip"
    make_study(mr, seed=23, variant="non_ct")
    corrupt = bytearray((tmp_path / "ok.zip").read_bytes())
    # flip bytes inside the first member's compressed data: CRC/deflate error at extraction
    corrupt[200:264] = bytes(64)
    jobs = {}
    for name, data in (("no_dicom", no_dicom), ("not_ct", mr.read_bytes()), ("corrupt", bytes(corrupt))):
        r = client.post("/v1/studies", content=data, headers={"content-type": "application/zip"})
        assert r.status_code == 201, (name, r.text)
        jobs[name] = client.post(
            "/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "none"}
        ).json()["job_id"]
    ok_job = client.post(
        "/v1/jobs", json={"study_id": _upload_file(client, tmp_path / "ok.zip"), "explain": "none"}
    ).json()["job_id"]
    expected = {"no_dicom": "no_dicom", "not_ct": "not_ct", "corrupt": "zip_invalid"}
    for name, job in jobs.items():
        st = wait_job(client, job)
        assert st["state"] == "failed", (name, st)
        assert st["error"]["code"] == expected[name], (name, st["error"])
        assert st["attempt"] == 1  # refusals are not retried
        assert client.get(f"/v1/jobs/{job}/result").json()["error"] == "job_failed"
    assert wait_job(client, ok_job)["state"] == "succeeded"


def test_phi_never_reaches_logs_or_answers(
    client: httpx.Client, worker: Worker, tmp_path: Path, capfd: Any
) -> None:
    p = tmp_path / f"{PHI_IDENTIFIERS.patient_id}.zip"
    make_study(p, seed=24, variant="phi")
    sid = _upload_file(client, p)
    job = client.post("/v1/jobs", json={"study_id": sid, "explain": "none"}).json()["job_id"]
    assert wait_job(client, job)["state"] == "succeeded"
    text = client.get(f"/v1/jobs/{job}/result").text + capfd.readouterr().err
    for ident in (PHI_IDENTIFIERS.patient_name, PHI_IDENTIFIERS.patient_id, PHI_IDENTIFIERS.birth_date):
        assert ident not in text


def test_batching_many_jobs(client: httpx.Client, worker: Worker, tmp_path: Path) -> None:
    ids = []
    for seed in range(30, 36):
        zp = tmp_path / f"{seed}.zip"
        make_study(zp, seed=seed)
        ids.append(
            client.post("/v1/jobs", json={"study_id": _upload_file(client, zp), "explain": "none"}).json()
        )
    states = [wait_job(client, j["job_id"])["state"] for j in ids]
    assert states == ["succeeded"] * len(ids)


def test_sha_dedup_shared_by_jobs(client: httpx.Client, worker: Worker, tmp_path: Path) -> None:
    zp = tmp_path / "d.zip"
    make_study(zp, seed=40)
    a, b = _upload_file(client, zp), _upload_file(client, zp)
    assert a == b
    assert hashlib.sha256(zp.read_bytes()).hexdigest() == client.get(f"/v1/studies/{a}").json()["sha256"]


def test_readyz_sees_the_worker(api: LiveApi, worker: Worker) -> None:
    with api.client() as c:
        wait_for(lambda: c.get("/readyz").status_code == 200, timeout=10, what="readyz")
        assert c.get("/readyz").json()["checks"]["worker"].startswith("heartbeat")


def test_reconciler_requeues_lost_and_expired_jobs(
    client: httpx.Client, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    study = _study_row(client, settings, tmp_path, seed=41)
    assert settings.database_url
    with connect(settings.database_url) as conn:
        from app.repository import Job, claim_job

        def job(max_attempts: int = 3) -> Job:
            return _insert_job(conn, study, max_attempts=max_attempts)

        lost = job()  # (1) a job committed in PostgreSQL whose id Redis never got
        dead = job()  # (2) a job claimed by a worker that died (lease expires, no heartbeat)
        assert claim_job(conn, dead.id, "dead-worker", lease_s=0.5) is not None
        doomed = job(max_attempts=1)  # (3) a job whose attempts are used up by dead workers
        assert claim_job(conn, doomed.id, "dead-worker", lease_s=0.5) is not None
        conn.execute("UPDATE jobs SET enqueued_at = now() - interval '1 hour' WHERE id = %s", (lost.id,))
    time.sleep(0.6)
    st_lost = wait_job(client, str(lost.id))
    st_dead = wait_job(client, str(dead.id))
    st_doomed = wait_job(client, str(doomed.id))
    assert st_lost["state"] == "succeeded" and st_lost["attempt"] == 1
    assert st_dead["state"] == "succeeded" and st_dead["attempt"] == 2
    assert st_doomed["state"] == "failed" and st_doomed["error"]["code"] == "worker_crashed"


def test_webhook_retries_with_backoff_until_delivered(
    client: httpx.Client, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    from app.repository import outbox_rows

    zp = tmp_path / "w.zip"
    make_study(zp, seed=43)
    sid = _upload_file(client, zp)
    with Receiver(statuses=[500, 503]) as hook:
        job = client.post(
            "/v1/jobs", json={"study_id": sid, "explain": "none", "callback_url": hook.url}
        ).json()["job_id"]
        assert wait_job(client, job)["state"] == "succeeded"
        wait_for(lambda: len(hook.requests) >= 3, timeout=30, what="three deliveries")
        times = [r["at"] for r in hook.requests[:3]]
    # backoff (base 0.2 s, doubling, ±20 % jitter; the dispatcher polls every 0.5 s)
    assert times[1] - times[0] >= 0.8 * 0.2 and times[2] - times[1] >= 0.8 * 0.4
    assert len({r["headers"]["X-Service4CT-Delivery"] for r in hook.requests}) == 1  # same outbox row
    assert settings.database_url
    with connect(settings.database_url) as conn:
        rows = outbox_rows(conn, uuid.UUID(job))
    assert len(rows) == 1 and rows[0]["attempts"] == 3 and rows[0]["delivered_at"] is not None
    assert rows[0]["last_status"] == 200


def test_explain_parameters_the_worker_refuses_fail_the_job_once_with_their_code(
    client: httpx.Client, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    """Jobs written past the API's check (older rules, a lowered budget) fail once, never retried."""
    study = _study_row(client, settings, tmp_path, seed=44)
    refused = {
        "explain_params_invalid": ("occlusion", {"window": 2, "stride": 1}),  # 2 million positions
        "explain_too_costly": ("integrated_gradients", {"internal_batch_size": 64, "steps": 64}),
    }
    ids = {}
    assert settings.database_url
    with connect(settings.database_url) as conn:
        for code, (method, params) in refused.items():
            ids[code] = _insert_job(conn, study, explain=method, explain_params=params).id
    worker.jobs.enqueue(list(ids.values()))
    for code, job_id in ids.items():
        st = wait_job(client, str(job_id))
        assert st["state"] == "failed" and st["error"]["code"] == code, st
        assert st["attempt"] == 1  # refused at once, not retried as an unexpected error


def test_a_real_worker_sends_every_selected_job_event_to_the_default_webhook(
    api: LiveApi, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    """job.started, job.succeeded and explanation.succeeded, from the worker's own transactions."""
    name = f"site-events-{uuid.uuid4().hex[:6]}"
    selected = ["job.started", "job.succeeded", "explanation.succeeded"]
    with Receiver() as hook, api.client(new_key(settings, name)) as c:
        r = c.put("/v1/webhook", json={"url": hook.url, "events": selected})
        assert r.status_code == 200, r.text
        zp = tmp_path / "ev.zip"
        make_study(zp, seed=23, rows=128, cols=128, pixel_spacing_mm=3.0, slice_spacing_mm=2.5)
        sid = _upload_file(c, zp)
        r = c.post("/v1/jobs", json={"study_id": sid, "explain": "gradcam", "client_ref": "wl-9"})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        assert wait_job(c, job)["state"] == "succeeded"
        wait_for(lambda: len(hook.requests) >= 3, timeout=30, what="three events")
    assert settings.database_url
    with connect(settings.database_url) as conn:
        secret = webhook_secret(conn, name)
    assert secret
    events = {}
    for req in hook.requests:
        h = req["headers"]
        event, delivery = h["X-Service4CT-Event"], h["X-Service4CT-Delivery"]
        assert verify(secret, req["body"], h[SIGNATURE_HEADER], delivery=delivery, event=event)
        events[event] = json.loads(req["body"])
    assert sorted(events) == sorted(selected) and len(hook.requests) == 3
    assert all(p["job_id"] == job and p["client_ref"] == "wl-9" for p in events.values())
    assert events["job.started"]["state"] == "running" and events["job.succeeded"]["label"] is not None
    assert events["explanation.succeeded"]["method"] == "gradcam"
