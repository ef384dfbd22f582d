"""The worklist with a real worker (demo model on CPU): urgent jobs run next, cancelling a
running job stores nothing more, the series picker and its override through the API.

The worker holds at most two jobs (prefetch 1 + batch 1), so a queue forms quickly.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, list_keys, new_key, storage_of, wait_for, wait_job  # type: ignore[import-not-found]
from seeding import small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.schemas_worklist import StudySeries
from app.worker.runner import Worker
from ml.phantom import make_study


@pytest.fixture(scope="module")
def settings(make_settings: Any) -> Settings:
    settings: Settings = make_settings(prefetch=1, max_batch=1)
    return settings


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, "worklist-worker")) as c:
        yield c


@pytest.fixture(scope="module")
def study(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("zips") / "s.zip"
    make_study(path, seed=5, label=1)
    return upload(client, path.read_bytes())


def _job(c: httpx.Client, study: str, **extra: Any) -> str:
    r = c.post("/v1/jobs", json={"study_id": study, "explain": "none", **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _at(status: dict[str, Any], field: str) -> dt.datetime:
    return dt.datetime.fromisoformat(status[field].replace("Z", "+00:00"))


def test_an_urgent_job_runs_before_the_waiting_routine_ones(
    client: httpx.Client, worker: Worker, study: str
) -> None:
    routine = [_job(client, study) for _ in range(5)]
    cancelled = _job(client, study)
    wait_for(lambda: client.get(f"/v1/jobs/{routine[0]}").json()["state"] != "queued", what="a busy worker")
    urgent = _job(client, study, priority="urgent")
    # routine jobs still waiting once the urgent one is queued (the worker holds at most two)
    waiting = [j for j in routine if client.get(f"/v1/jobs/{j}").json()["state"] == "queued"]
    assert len(waiting) >= 2, "the worker took the whole queue"
    status = client.get(f"/v1/jobs/{urgent}").json()
    assert status["state"] != "queued" or status["queue_position"] == 0  # nothing is ahead of it
    # a queued job that is cancelled never runs
    assert client.post(f"/v1/jobs/{cancelled}/cancel").json()["state"] == "cancelled"
    done = {j: wait_job(client, j) for j in [*routine, urgent]}
    assert all(s["state"] == "succeeded" for s in done.values()), done
    started = _at(done[urgent], "started_at")
    # at most one waiting routine job may start first: the one the worker had already read from the
    # queue (prefetch 1) before the urgent job arrived, still "queued" in PostgreSQL until claimed
    ahead = [done[j] for j in waiting if _at(done[j], "started_at") < started]
    assert len(ahead) <= 1 < len(waiting), (started, ahead, waiting)
    never = client.get(f"/v1/jobs/{cancelled}").json()
    assert never["state"] == "cancelled" and never["attempt"] == 0 and never["started_at"] is None


def test_cancelling_a_running_job_stores_nothing_more(
    client: httpx.Client, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "big.zip"  # big enough to still be running when the cancel arrives
    make_study(path, seed=8, label=1, rows=192, cols=192, pixel_spacing_mm=2.0, slice_spacing_mm=2.0)
    study = upload(client, path.read_bytes())
    job = _job(client, study, explain="gradcam", client_ref="cancel-me")
    wait_for(
        lambda: client.get(f"/v1/jobs/{job}").json()["state"] == "running", interval=0.02, what="running"
    )
    r = client.post(f"/v1/jobs/{job}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    # the worker stops at its next stage boundary and lets go of the job
    wait_for(lambda: uuid.UUID(job) not in worker.held, timeout=120, what="the worker to drop the job")
    time.sleep(0.5)
    status = client.get(f"/v1/jobs/{job}").json()
    assert status["state"] == "cancelled" and status["stage"] is None and status["client_ref"] == "cancel-me"
    assert client.get(f"/v1/jobs/{job}/result").json()["error"] == "job_cancelled"
    assert settings.database_url
    with connect(settings.database_url) as conn:
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM results WHERE job_id = %s) AS results, "
            "(SELECT count(*) FROM explanations WHERE job_id = %s) AS explanations",
            (job, job),
        ).fetchone()
    assert stored == {"results": 0, "explanations": 0}
    assert list_keys(storage_of(settings), f"jobs/{job}/") == []
    # the worker goes on
    after = _job(client, study)
    assert wait_job(client, after)["state"] == "succeeded"


def test_series_picker_before_any_prediction_and_its_override(
    client: httpx.Client, worker: Worker, tmp_path: Path
) -> None:
    path = tmp_path / "multi.zip"
    info = make_study(path, seed=9, label=0, variant="multi_series")
    study = upload(client, path.read_bytes())
    r = client.get(f"/v1/studies/{study}/series")
    assert r.status_code == 200, r.text
    picker = StudySeries.model_validate(r.json())
    by_uid = {s.series_uid: s for s in picker.series}
    assert set(by_uid) == {s.series_uid for s in info.series}
    primary = info.primary_series_uid
    assert picker.selected_uid == primary and by_uid[primary].rank == 1 and by_uid[primary].selected
    usable = [s for s in picker.series if s.usable]
    other = next(s.series_uid for s in usable if s.series_uid != primary)
    assert by_uid[other].rank == 2 and not by_uid[other].selected
    scout = next(s for s in picker.series if not s.usable)
    assert scout.rank is None and "localizer" in [q.code for q in scout.reasons]
    assert client.get(f"/v1/studies/{study}/series").json() == r.json()  # kept, not scanned again
    # the override: refused at once for an unknown or unusable series, used by the worker otherwise
    bad = client.post("/v1/jobs", json={"study_id": study, "series_uid": "1.2.3.4"})
    assert bad.status_code == 422 and bad.json()["error"] == "series_not_found"
    bad = client.post("/v1/jobs", json={"study_id": study, "series_uid": scout.series_uid})
    assert bad.status_code == 422 and bad.json()["error"] == "localizer"
    job = _job(client, study, series_uid=other)
    assert wait_job(client, job)["state"] == "succeeded"
    result = client.get(f"/v1/jobs/{job}/result").json()
    assert result["series"]["selected_uid"] == other
    ranked = {s["series_uid"]: s["rank"] for s in result["series"]["ranking"]}
    assert ranked == {s.series_uid: s.rank for s in picker.series}


def test_series_picker_of_a_study_that_is_not_dicom(client: httpx.Client) -> None:
    study = upload(client, small_zip("not-dicom"))
    r = client.get(f"/v1/studies/{study}/series")
    assert r.status_code == 422 and r.json()["error"] in ("no_dicom", "dicom_invalid"), r.text
    assert client.get(f"/v1/studies/{uuid.uuid4()}/series").json()["error"] == "study_not_found"
