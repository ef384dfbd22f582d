"""Deletion and retention through the real API, PostgreSQL and S3: DELETE of a job and of a study
(CT images of its jobs included), the janitor's sweeps of late writes, and the retention pass
(per-client days set with the CLI, batches, several janitors at once)."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import uuid
from typing import Any

import pytest
from cli import run_cli_on  # type: ignore[import-not-found]
from conftest import LiveApi, list_keys, new_key, storage_of  # type: ignore[import-not-found]
from seeding import create_job, finish_succeeded, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import Database, connect
from app.repository import BlobRef, ExplanationRecord, claim_job, finish_job, upsert_explanation
from app.retention import RetentionCounts, retention_pass, sweep_due

#: what the worker writes for an explanation (ml.explain.files.write_saliency), CT images included
FILES = {
    "nifti": "saliency.nii.gz",
    "stats_json": "stats.json",
    "sprite_png": "saliency_sprite.png",
    "peak_png": "saliency_peak.png",
    "ct_layer": "layer_ct.png",
    "saliency_layer": "layer_saliency.png",
    "heat_layer": "layer_heat.png",
}
CT_ROLES = {"sprite_png", "peak_png", "ct_layer"}


def _due_now(settings: Settings) -> None:
    """Time passes: every deferred sweep is due (as after sweep_after_s)."""
    with connect(str(settings.database_url)) as conn:
        conn.execute("UPDATE blob_sweeps SET not_before = now()")


def _db(settings: Settings) -> Database:
    db = Database(str(settings.database_url))
    db.open()
    return db


def _sweep(settings: Settings) -> int:
    db = _db(settings)
    try:
        return sweep_due(db, storage_of(settings), batch=2)
    finally:
        db.close()


def _sweeps_left(settings: Settings) -> int:
    with connect(str(settings.database_url)) as conn:
        row = conn.execute("SELECT count(*) AS n FROM blob_sweeps").fetchone()
    return int(row["n"]) if row else -1


def test_delete_job_refuses_active_deletes_rows_and_every_file(api: LiveApi, settings: Settings) -> None:
    key = new_key(settings, "del-job")
    storage = storage_of(settings)
    with api.client(key) as c, api.client(new_key(settings, "del-other")) as other:
        study = upload(c, small_zip(f"del-{uuid.uuid4().hex[:6]}"))
        queued, done = create_job(c, study), create_job(c, study)
        r = c.delete(f"/v1/jobs/{queued}")
        assert r.status_code == 409 and r.json()["error"] == "job_active", r.text
        assert c.post(f"/v1/jobs/{queued}/cancel").status_code == 200
        assert c.delete(f"/v1/jobs/{queued}").status_code == 204
        assert c.get(f"/v1/jobs/{queued}").status_code == 404

        keys = finish_succeeded(api, done, files=FILES)
        assert other.delete(f"/v1/jobs/{done}").status_code == 404  # another client's job
        assert c.get(f"/v1/jobs/{done}/result").status_code == 200
        assert c.delete(f"/v1/jobs/{done}").status_code == 204
        for path in ("", "/result", "/explanation"):
            assert c.get(f"/v1/jobs/{done}{path}").status_code == 404
        assert list_keys(storage, f"jobs/{done}/") == []
        assert c.delete(f"/v1/jobs/{done}").status_code == 404  # deleted once
        assert c.get(f"/v1/studies/{study}").status_code == 200  # the study stays

        # an attempt still writing when its job was deleted: the janitor's later sweep removes it
        storage.put_bytes(keys[0], b"late")
        assert _sweep(settings) == 0 and list_keys(storage, f"jobs/{done}/") != []  # not due yet
        _due_now(settings)
        assert _sweep(settings) >= 2 and list_keys(storage, f"jobs/{done}/") == []
        assert _sweeps_left(settings) == 0


def _explained_by_child(api: LiveApi, c: Any, parent: str) -> tuple[str, str]:
    """An explain job of ``parent`` finished as a worker would: (its id, its blob key)."""
    r = c.post(f"/v1/jobs/{parent}/explain", json={"method": "saliency"})
    assert r.status_code == 202, r.text
    child = r.json()["job_id"]
    with connect(str(api.settings.database_url)) as conn:
        job = claim_job(conn, uuid.UUID(child), "seed-worker", 60.0)
        assert job is not None
        key = f"jobs/{child}/attempt-{job.attempt}/saliency/saliency/saliency.nii.gz"
        storage_of(api.settings).put_bytes(key, b"nifti")
        with conn.transaction():
            assert finish_job(conn, job.id, job.attempt, timings={"total": 0.1}) is not None
            upsert_explanation(
                conn,
                ExplanationRecord(
                    job_id=uuid.UUID(parent),
                    method="saliency",
                    produced_by=job.id,
                    attempt=job.attempt,
                    params={},
                    stats={"max": 1.0},
                    geometry={"shape_zyx": [4, 8, 8]},
                    blobs={"nifti": BlobRef(key, "application/gzip")},
                    model_name="m",
                    model_version="1",
                ),
            )
    return child, key


def test_deleting_an_explain_job_or_its_parent_deletes_its_explanation(
    api: LiveApi, settings: Settings
) -> None:
    storage = storage_of(settings)
    with api.client(new_key(settings, "del-explain")) as c:
        parent = create_job(c, upload(c, small_zip(f"explain-{uuid.uuid4().hex[:6]}")))
        finish_succeeded(api, parent, files=FILES)
        child, _ = _explained_by_child(api, c, parent)
        assert c.get(f"/v1/jobs/{parent}/explanation", params={"method": "saliency"}).status_code == 200
        assert c.delete(f"/v1/jobs/{child}").status_code == 204
        r = c.get(f"/v1/jobs/{parent}/explanation", params={"method": "saliency"})
        assert r.status_code == 404 and r.json()["error"] == "explanation_not_found"
        assert list_keys(storage, f"jobs/{child}/") == []
        assert c.get(f"/v1/jobs/{parent}/explanation").status_code == 200  # gradcam: its own

        child, _ = _explained_by_child(api, c, parent)
        assert c.delete(f"/v1/jobs/{parent}").status_code == 204  # takes its explain jobs along
        assert c.get(f"/v1/jobs/{child}").status_code == 404
        assert list_keys(storage, f"jobs/{child}/") == [] and list_keys(storage, f"jobs/{parent}/") == []


def test_delete_study_deletes_its_zip_and_the_ct_images_of_its_jobs(api: LiveApi, settings: Settings) -> None:
    key = new_key(settings, "del-study")
    storage = storage_of(settings)
    with api.client(key) as c:
        study = upload(c, small_zip(f"study-{uuid.uuid4().hex[:6]}"))
        job = create_job(c, study)
        keys = dict(zip(FILES, finish_succeeded(api, job, files=FILES), strict=True))
        assert list_keys(storage, f"studies/{study}/") != []
        assert c.delete(f"/v1/studies/{study}").status_code == 204
        assert list_keys(storage, f"studies/{study}/") == []
        left = set(list_keys(storage, f"jobs/{job}/"))
        assert left == {k for role, k in keys.items() if role not in CT_ROLES}
        assert c.get(f"/v1/jobs/{job}/result").status_code == 200  # the job keeps its result
        r = c.get(f"/v1/jobs/{job}/explanation")
        assert r.status_code == 200 and set(r.json()["files"]) == set(FILES) - CT_ROLES, r.text
        assert c.delete(f"/v1/studies/{study}").status_code == 404

        # a job still running on the deleted study stores its CT layer afterwards: the sweep
        # removes the file and the role, and keeps the rest
        storage.put_bytes(keys["ct_layer"], b"late")
        with connect(str(settings.database_url)) as conn:
            conn.execute(
                "UPDATE explanations SET blobs = blobs || jsonb_build_object('ct_layer', "
                "jsonb_build_object('key', %s::text, 'content_type', 'image/png')) WHERE job_id = %s",
                (keys["ct_layer"], job),
            )
        _due_now(settings)
        _sweep(settings)
        assert set(list_keys(storage, f"jobs/{job}/")) == left
        assert set(c.get(f"/v1/jobs/{job}/explanation").json()["files"]) == set(FILES) - CT_ROLES


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_on(str(settings.database_url), "client", "retention", *args)


def _age(settings: Settings, table: str, ids: list[str], days: int) -> None:
    with connect(str(settings.database_url)) as conn:
        conn.execute(
            f"UPDATE {table} SET created_at = now() - make_interval(days => %s) WHERE id = ANY(%s::uuid[])",
            (days, ids),
        )


@pytest.mark.parametrize("default_days", [None, 30])
def test_retention_janitors_delete_what_is_past_each_clients_days(
    api: LiveApi, settings: Settings, default_days: int | None
) -> None:
    tag = uuid.uuid4().hex[:6]
    short, kept = f"ret-short-{tag}", f"ret-keep-{tag}"
    storage = storage_of(settings)
    with api.client(new_key(settings, short)) as c, api.client(new_key(settings, kept)) as k:
        r = _cli(settings, short, "--days", "2")
        assert r.returncode == 0 and "retention: 2 days" in r.stdout, r.stderr
        r = _cli(settings, kept, "--days", "0")
        assert r.returncode == 0 and "kept until deleted" in r.stdout, r.stderr
        assert _cli(settings, "no-such-client", "--days", "1").returncode == 2

        old_study = upload(c, small_zip(f"old-{tag}"))
        new_study = upload(c, small_zip(f"new-{tag}"))
        old_jobs = [create_job(c, old_study) for _ in range(5)]
        for j in old_jobs[:4]:
            finish_succeeded(api, j, files=FILES)
        running = old_jobs[4]  # queued: past its days, but waits until it finishes
        new_job = create_job(c, new_study)
        kept_study = upload(k, small_zip(f"kept-{tag}"))
        kept_job = create_job(k, kept_study)
        finish_succeeded(api, kept_job, files=FILES)
        _age(settings, "studies", [old_study, kept_study], 3)
        _age(settings, "jobs", [*old_jobs, kept_job], 3)

        s = settings.model_copy(update={"retention_days": default_days, "retention_batch": 2})
        dbs = [_db(settings) for _ in range(2)]
        try:
            with cf.ThreadPoolExecutor(2) as pool:  # two janitors at once share the work
                counts = list(pool.map(lambda db: retention_pass(db, storage, s), dbs))
            again = retention_pass(dbs[0], storage, s)
            assert sum(n.jobs for n in counts) == 4 and sum(n.studies for n in counts) == 0
            assert again == RetentionCounts()  # idempotent: nothing left
            for j in old_jobs[:4]:
                assert c.get(f"/v1/jobs/{j}").status_code == 404
                assert list_keys(storage, f"jobs/{j}/") == []
            # a queued job (and its study) wait until it is finished
            assert c.get(f"/v1/jobs/{running}").json()["state"] == "queued"
            assert c.get(f"/v1/studies/{old_study}").status_code == 200
            assert c.post(f"/v1/jobs/{running}/cancel").status_code == 200
            assert retention_pass(dbs[1], storage, s) == RetentionCounts(studies=1, jobs=1)
        finally:
            for db in dbs:
                db.close()
        assert c.get(f"/v1/jobs/{running}").status_code == 404
        assert c.get(f"/v1/studies/{old_study}").status_code == 404
        assert list_keys(storage, f"studies/{old_study}/") == []
        assert c.get(f"/v1/jobs/{new_job}").status_code == 200
        assert c.get(f"/v1/studies/{new_study}").status_code == 200
        assert k.get(f"/v1/jobs/{kept_job}/result").status_code == 200  # retention 0: kept
        assert k.get(f"/v1/studies/{kept_study}").status_code == 200

        r = _cli(settings, short, "--default")  # the CLI's own settings: no retention_days
        assert r.returncode == 0 and "retention: kept until deleted (default)" in r.stdout, r.stderr
