"""The API against real PostgreSQL, Redis and S3 (no worker needed here)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, list_keys, new_key, storage_of, wait_for  # type: ignore[import-not-found]

from app.config import DEFAULT_MANIFEST, Settings
from app.db import connect
from app.main import build_services
from app.migrate import NotMigratedError
from app.schemas import JobStatus
from ml.model import Manifest
from ml.phantom import make_study


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("zips") / "study.zip"
    make_study(p, seed=11, label=1)
    return p


@pytest.fixture(scope="module")
def key_a(settings: Settings) -> str:
    return new_key(settings, "site-a")


@pytest.fixture(scope="module")
def key_b(settings: Settings) -> str:
    return new_key(settings, "site-b")


def _upload(c: httpx.Client, data: bytes, **headers: str) -> httpx.Response:
    return c.post("/v1/studies", content=data, headers={"content-type": "application/zip", **headers})


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_probes_docs_and_metrics(api: LiveApi) -> None:
    with api.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        ready = c.get("/readyz")
        # no worker runs in this module: readiness says so (503), the dependencies are fine
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["postgres"] == checks["redis"] == checks["s3"] == "ok"
        assert "worker" in checks
        spec = c.get("/openapi.json").json()
        for path in (
            "/v1/studies",
            "/v1/jobs",
            "/v1/jobs/{job_id}",
            "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/explain",
            "/v1/jobs/{job_id}/explanation",
            "/v1/models",
            "/v1/studies/{study_id}",
            "/v1/studies/{study_id}/predict",
        ):
            assert path in spec["paths"], path
        upload = spec["paths"]["/v1/studies"]["post"]
        assert {"application/zip", "multipart/form-data"} <= set(upload["requestBody"]["content"])
        assert "413" in upload["responses"] and "zip_invalid" in upload["responses"]["422"]["description"]
        # every response model used by /v1 routes carries an example
        for name in ("StudyOut", "JobAccepted", "JobStatus", "JobResult", "Explanation", "ErrorBody"):
            assert spec["components"]["schemas"][name].get("examples"), name
        assert "payload_too_large" in spec["info"]["description"]
        assert c.get("/docs").status_code == 200
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "s4ct_http_requests_total" in metrics.text
        assert 's4ct_jobs{state="queued"}' in metrics.text


def test_errors_have_stable_shape_and_request_id(api: LiveApi, key_a: str) -> None:
    with api.client() as c:
        r = c.get("/v1/models")
        assert r.status_code == 401
        body = r.json()
        assert body["error"] == "unauthorized" and body["request_id"] == r.headers["x-request-id"]
        r = c.get("/v1/models", headers={"Authorization": "Bearer s4ct_wrong", "X-Request-ID": "rid-42"})
        assert r.status_code == 401 and r.json()["request_id"] == "rid-42"
    with api.client(key_a) as c:
        assert c.get("/v1/nowhere").json()["error"] == "not_found"
        assert c.get("/v1/jobs/not-a-uuid").json()["error"] == "validation_error"
        assert c.get(f"/v1/jobs/{uuid.uuid4()}").json()["error"] == "job_not_found"
        assert c.get(f"/v1/studies/{uuid.uuid4()}").json()["error"] == "study_not_found"


def test_models_card(api: LiveApi, key_a: str) -> None:
    with api.client(key_a) as c:
        body = c.get("/v1/models").json()
    names = {m["name"]: m for m in body["models"]}
    assert body["default"] in names
    demo = names[body["default"]]
    assert demo["clinical_use"] is False
    assert set(demo["operating_points"]) >= {"balanced", "high_sensitivity", "high_specificity"}
    assert demo["preprocess"]["hu_window"] == [-1000.0, 600.0]
    # the OOD statistics the manifest publishes, without where the file lives
    entry = Manifest.load(DEFAULT_MANIFEST).get(body["default"])
    if entry.ood is None:
        assert demo["ood"] is None
    else:
        assert demo["ood"] == {k: v for k, v in entry.ood.to_dict().items() if k not in ("uri", "sha256")}


def test_upload_raw_and_multipart_dedup(
    api: LiveApi, settings: Settings, key_a: str, study_zip: Path
) -> None:
    data = study_zip.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with api.client(key_a) as c:
        r = _upload(c, data)
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["sha256"] == sha and first["size_bytes"] == len(data) and not first["existing"]
        assert first["files"] > 20
        # the same bytes again, this time as a form upload: the existing study
        r2 = c.post("/v1/studies", files={"file": ("any-name.zip", data, "application/zip")})
        assert r2.status_code == 200, r2.text
        assert r2.json()["study_id"] == first["study_id"] and r2.json()["existing"] is True
        assert c.get(f"/v1/studies/{first['study_id']}").json()["sha256"] == sha
    storage = storage_of(settings)
    assert storage.get_bytes(f"studies/{first['study_id']}/source.zip") == data
    # the duplicate upload's own copy was removed: one object under studies/
    assert len(list(list_keys(storage, "studies/"))) == 1


def test_multipart_streams_large_part(api: LiveApi, settings: Settings, key_a: str) -> None:
    # a 12 MiB stored member: the multipart parser path across several S3 parts
    payload = _zip_of({"a/b.dcm": random.Random(0).randbytes(12 << 20)})  # incompressible
    with api.client(key_a) as c:
        r = c.post("/v1/studies", files={"upload": ("x.zip", payload, "application/zip")}, data={"note": "x"})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert storage_of(settings).get_bytes(f"studies/{r.json()['study_id']}/source.zip") == payload


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"this is not a zip", "zip_invalid"),
        (b"", "zip_invalid"),
        (_zip_of({}), "zip_invalid"),
        (_zip_of({"../../etc/passwd": b"x"}), "zip_unsafe_path"),
        (_zip_of({"big.dcm": b"\0" * (3 << 20)}), "zip_bomb"),
    ],
)
def test_bad_zips_are_refused_and_nothing_is_kept(
    api: LiveApi, settings: Settings, key_a: str, data: bytes, code: str
) -> None:
    storage = storage_of(settings)
    before = set(list_keys(storage, "studies/"))
    with api.client(key_a) as c:
        r = _upload(c, data)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == code
    assert set(list_keys(storage, "studies/")) == before


def test_upload_limits_and_media_type(make_settings: Any) -> None:
    s = make_settings(max_upload_bytes=1 << 20)
    key = new_key(s, "tiny")
    with LiveApi(s) as live, live.client(key) as c:
        big = _zip_of({"x.bin": random.Random(1).randbytes(2 << 20)})
        r = _upload(c, big)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

        def chunks() -> Any:  # no content-length: the cap applies while streaming
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        r = c.post("/v1/studies", content=chunks(), headers={"content-type": "application/zip"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        r = c.post("/v1/studies", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert list_keys(storage_of(s), "studies/") == []


def test_upload_slots_bound_concurrency(make_settings: Any) -> None:
    """One slot: a second upload waits, then gets 503 server_busy + Retry-After; nothing of it is kept."""
    s = make_settings(max_concurrent_uploads=1, upload_wait_s=1.0)
    key = new_key(s, "gate")
    first = _zip_of({"a.bin": random.Random(2).randbytes(3 << 20)})
    second = _zip_of({"b.bin": random.Random(3).randbytes(1 << 20)})
    started, release = threading.Event(), threading.Event()
    answers: list[httpx.Response] = []

    def slow_body() -> Any:
        yield first[: 1 << 20]
        started.set()
        release.wait(30)
        yield first[1 << 20 :]

    with LiveApi(s) as live, live.client(key) as c:

        def send_first() -> None:
            with live.client(key) as c1:
                answers.append(
                    c1.post("/v1/studies", content=slow_body(), headers={"content-type": "application/zip"})
                )

        t = threading.Thread(target=send_first)
        t.start()
        assert started.wait(30)
        # the first body's bytes are sent, but its request may still be in auth: wait until it holds the slot
        gate = live.app.state.services.uploads
        wait_for(lambda: gate.in_use == 1, timeout=30, interval=0.01, what="the first upload's slot")
        busy = _upload(c, second)
        assert busy.status_code == 503 and busy.json()["error"] == "server_busy", busy.text
        assert int(busy.headers["retry-after"]) >= 1
        release.set()
        t.join(60)
        assert answers and answers[0].status_code == 201, answers
        assert _upload(c, second).status_code == 201  # the slot is free again
    assert len(list_keys(storage_of(s), "studies/")) == 2


def test_jobs_idempotency_and_isolation(
    api: LiveApi, settings: Settings, key_a: str, key_b: str, study_zip: Path
) -> None:
    with api.client(key_a) as a, api.client(key_b) as b:
        study = _upload(a, study_zip.read_bytes()).json()["study_id"]
        body = {"study_id": study, "explain": "none"}
        r1 = a.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
        assert r1.status_code == 202, r1.text
        job = r1.json()["job_id"]
        assert r1.headers["location"] == f"/v1/jobs/{job}"
        r2 = a.post("/v1/jobs", json=dict(reversed(list(body.items()))), headers={"Idempotency-Key": "k-1"})
        assert r2.status_code == 202 and r2.json()["job_id"] == job  # replay: same answer
        r3 = a.post("/v1/jobs", json={**body, "explain": "gradcam"}, headers={"Idempotency-Key": "k-1"})
        assert r3.status_code == 409 and r3.json()["error"] == "idempotency_conflict"
        # the shorthand route, and no key: a new job each time
        r4 = a.post(f"/v1/studies/{study}/predict", json={"explain": "none"})
        assert r4.status_code == 202 and r4.json()["job_id"] != job
        status = a.get(f"/v1/jobs/{job}").json()
        assert status["state"] == "queued" and status["attempt"] == 0 and status["queue_position"] >= 0
        JobStatus.model_validate(status)  # the hand-built hot-path body matches its documented schema
        assert a.get(f"/v1/jobs/{job}/result").json()["error"] == "job_not_finished"
        # client B sees none of it, and cannot use A's study
        assert b.get(f"/v1/jobs/{job}").status_code == 404
        assert b.get(f"/v1/studies/{study}").status_code == 404
        assert b.post("/v1/jobs", json=body).json()["error"] == "study_not_found"
        assert b.delete(f"/v1/studies/{study}").status_code == 404
        # B may use the same Idempotency-Key independently
        r5 = b.post("/v1/jobs", json={"study_id": str(uuid.uuid4())}, headers={"Idempotency-Key": "k-1"})
        assert r5.json()["error"] == "study_not_found"
    # the job ids are in the stream (enqueued after commit)
    from app.queue import JobQueue

    assert settings.redis_url
    q = JobQueue.from_url(settings.redis_url, settings.stream, settings.group)
    assert uuid.UUID(job) in q.job_ids_in_stream()
    q.close()


def test_job_validation(api: LiveApi, key_a: str, study_zip: Path) -> None:
    with api.client(key_a) as c:
        study = _upload(c, study_zip.read_bytes()).json()["study_id"]
        r = c.post("/v1/jobs", json={"study_id": study, "model": "nope"})
        assert r.status_code == 422 and r.json()["error"] == "model_unavailable"
        r = c.post("/v1/jobs", json={"study_id": study, "explain": "magic"})
        assert r.json()["error"] == "validation_error"
        r = c.post(
            "/v1/jobs",
            json={"study_id": study, "explain": "integrated_gradients", "explain_params": {"steps": 0}},
        )
        assert r.status_code == 422 and "steps" in r.json()["detail"]
        r = c.post("/v1/jobs", json={"study_id": study, "callback_url": "not a url"})
        assert r.json()["error"] == "validation_error"
        r = c.post("/v1/jobs", content=b"{broken", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_delete_study_removes_blobs(api: LiveApi, settings: Settings, key_a: str) -> None:
    data = _zip_of({"x.dcm": b"DICM" * 100})
    with api.client(key_a) as c:
        sid = _upload(c, data).json()["study_id"]
        job = c.post("/v1/jobs", json={"study_id": sid}).json()["job_id"]
        assert c.delete(f"/v1/studies/{sid}").status_code == 204
        assert c.get(f"/v1/studies/{sid}").status_code == 404
        # the job remains, detached from the deleted study
        assert c.get(f"/v1/jobs/{job}").json()["study_id"] is None
    assert not storage_of(settings).exists(f"studies/{sid}/source.zip")


def test_refuses_to_start_unmigrated(stack: Any, settings: Settings) -> None:
    url = stack.create_database("unmigrated_" + uuid.uuid4().hex[:6])
    with pytest.raises(NotMigratedError):
        build_services(settings.model_copy(update={"database_url": url}))
    with connect(url) as conn:
        assert conn.execute("SELECT to_regclass('jobs') IS NULL AS missing").fetchone() == {"missing": True}


def test_api_never_logs_identifiers(api: LiveApi, key_a: str, tmp_path: Path, capfd: Any) -> None:
    from ml.phantom import PHI_IDENTIFIERS

    p = tmp_path / f"{PHI_IDENTIFIERS.patient_id}.zip"
    make_study(p, seed=12, variant="phi")
    with api.client(key_a) as c:
        r = c.post("/v1/studies", files={"file": (p.name, p.read_bytes(), "application/zip")})
    assert r.status_code == 201
    text = json.dumps(r.json()) + capfd.readouterr().err
    for ident in (PHI_IDENTIFIERS.patient_name, PHI_IDENTIFIERS.patient_id):
        assert ident not in text


def test_study_upload_idempotency(api: LiveApi, key_a: str) -> None:
    one, two = _zip_of({"a.dcm": b"1" * 100}), _zip_of({"b.dcm": b"2" * 100})
    with api.client(key_a) as c:
        r1 = _upload(c, one, **{"Idempotency-Key": "up-1"})
        r2 = _upload(c, one, **{"Idempotency-Key": "up-1"})
        assert r1.status_code == 201 and r2.status_code == 201 and r1.json() == r2.json()
        r3 = _upload(c, two, **{"Idempotency-Key": "up-1"})
        assert r3.status_code == 409 and r3.json()["error"] == "idempotency_conflict"


def test_concurrent_migrations_apply_once(stack: Any) -> None:
    import threading

    from app.migrate import migrate

    url = stack.create_database("mig_" + uuid.uuid4().hex[:8])
    applied: list[list[str]] = []

    def run() -> None:
        with connect(url) as conn:
            applied.append(migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from app.migrate import MIGRATIONS_DIR

    shipped = len(list(MIGRATIONS_DIR.glob("*.sql")))
    assert sorted(len(a) for a in applied) == [0, 0, 0, shipped]


def test_object_store_down_is_a_clean_error(settings: Settings, key_a: str) -> None:
    from app.api.deps import Services
    from app.storage import Storage

    live = build_services(settings)
    assert settings.s3_access_key and settings.s3_secret_key
    dead = Storage(
        "http://127.0.0.1:9",
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        settings.s3_bucket,
        max_attempts=1,
        connect_timeout=1,
    )
    services = Services(settings=settings, db=live.db, storage=dead, queue=live.queue, manifest=live.manifest)
    try:
        with LiveApi(settings, services) as api, api.client(key_a) as c:
            r = _upload(c, _zip_of({"a.dcm": b"x" * 10}))
            assert r.status_code == 502 and r.json()["error"] == "upload_failed"
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["s3"].startswith("unreachable")
    finally:
        live.close()
