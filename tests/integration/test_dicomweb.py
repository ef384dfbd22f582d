"""DICOMweb with a real PACS (Orthanc): import, predict, push back; STOW-RS ingest.

The round trip: a phantom study is stored in Orthanc by STOW-RS, imported by the worker by
WADO-RS (``POST /v1/studies/import``), predicted, and its SR and Secondary Capture arrive
back in Orthanc by STOW-RS, in the same study (Orthanc answers 200 even for instances it
refuses: its Failed SOP Sequence is what is checked).
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveApi, new_key, wait_for, wait_job  # type: ignore[import-not-found]
from orthanc import Orthanc, running_orthanc  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect
from app.dicomweb import multipart_body, stow, stow_failures
from app.repository.dicom import add_endpoint
from app.worker.runner import Worker
from ml.phantom import make_study

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct" / "cap002.zip"
GRID: dict[str, Any] = {"rows": 128, "cols": 128, "pixel_spacing_mm": 3.0, "slice_spacing_mm": 2.5}
CLIENT = "site-pacs"


@pytest.fixture(scope="module")
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(dicomweb_backoff_s=0.2, dicomweb_backoff_max_s=1.0)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as o:
        yield o


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, CLIENT)) as c:
        yield c


def _files(zip_path: Path) -> list[bytes]:
    with zipfile.ZipFile(zip_path) as z:
        return [z.read(n) for n in z.namelist() if not n.endswith("/")]


def _endpoint(settings: Settings, role: str, url: str) -> None:
    assert settings.database_url
    with connect(settings.database_url) as conn:
        add_endpoint(conn, CLIENT, role, url)  # type: ignore[arg-type]


def test_round_trip_through_orthanc(
    client: httpx.Client, worker: Worker, orthanc: Orthanc, settings: Settings, tmp_path: Path
) -> None:
    info = make_study(tmp_path / "s.zip", seed=41, label=1, difficulty=(0.9, 1.0), **GRID)
    files = _files(tmp_path / "s.zip")
    with httpx.Client(timeout=60) as pacs:
        r = stow(pacs, orthanc.dicomweb, files)
        assert r.status_code == 200 and stow_failures(r.json(), len(files)) == [], r.text
    _endpoint(settings, "source", orthanc.dicomweb)
    _endpoint(settings, "destination", orthanc.dicomweb)

    r = client.post(
        "/v1/studies/import",
        json={
            "dicomweb_url": orthanc.dicomweb + "/",
            "study_instance_uid": info.study_uid,
            "explain": "gradcam",
        },
    )
    assert r.status_code == 202, r.text
    job = r.json()["job_id"]
    status = wait_job(client, job)
    assert status["state"] == "succeeded", status
    assert status["study_id"] is not None  # the imported study is a study record like an upload
    result = client.get(f"/v1/jobs/{job}/result").json()
    assert result["series"]["selected_uid"] == info.primary_series_uid

    def pushed() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job}/dicom").json()
        return body if body["push"] and body["push"][0]["delivered_at"] else None

    listing = wait_for(pushed, timeout=60, interval=0.3, what="the push to Orthanc")
    assert listing["push"][0]["last_error"] is None and listing["push"][0]["last_status"] == 200
    objects = {o["kind"]: o for o in listing["objects"]}
    assert set(objects) == {"sr", "sc", "seg"}
    # all three arrived in the patient's study in Orthanc, next to the CT series
    with httpx.Client(timeout=30) as pacs:
        series = pacs.get(f"{orthanc.dicomweb}/studies/{info.study_uid}/series").json()
        modalities = sorted(s["00080060"]["Value"][0] for s in series)
        assert modalities == ["CT", "OT", "SEG", "SR"], modalities  # a Secondary Capture's modality is OT
        for o in objects.values():
            found = pacs.get(
                f"{orthanc.dicomweb}/studies/{info.study_uid}/series/{o['series_instance_uid']}/instances"
            ).json()
            assert [i["00080018"]["Value"][0] for i in found] == [o["sop_instance_uid"]]


def test_import_needs_a_configured_endpoint(client: httpx.Client) -> None:
    r = client.post(
        "/v1/studies/import",
        json={"dicomweb_url": "http://203.0.113.9/dicom-web", "study_instance_uid": "1.2.3"},
    )
    assert r.status_code == 422 and r.json()["error"] == "dicomweb_endpoint_not_configured", r.text
    r = client.post(
        "/v1/studies/import", json={"dicomweb_url": "http://x/", "study_instance_uid": "not-a-uid"}
    )
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


def test_import_of_an_unknown_study_fails_with_its_code(
    client: httpx.Client, worker: Worker, orthanc: Orthanc, settings: Settings
) -> None:
    _endpoint(settings, "source", orthanc.dicomweb)
    r = client.post(
        "/v1/studies/import", json={"dicomweb_url": orthanc.dicomweb, "study_instance_uid": "1.2.3.999"}
    )
    assert r.status_code == 202, r.text
    status = wait_job(client, r.json()["job_id"])
    assert status["state"] == "failed" and status["error"]["code"] == "dicomweb_fetch_failed", status


def test_stow_ingest_creates_the_same_study_record(
    client: httpx.Client, worker: Worker, tmp_path: Path
) -> None:
    make_study(tmp_path / "s.zip", seed=42, **GRID)
    files = _files(tmp_path / "s.zip")
    body, ctype = multipart_body(files)
    data = b"".join(body)
    r = client.post("/v1/dicomweb/studies", content=data, headers={"content-type": ctype})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json", r.text
    assert len(r.json()["00081199"]["Value"]) == len(files)
    study_id = r.headers["X-Service4CT-Study-Id"]
    assert r.headers["X-Service4CT-Existing"] == "false"
    study = client.get(f"/v1/studies/{study_id}").json()
    assert study["files"] == len(files)
    # the same instances again: the same study
    again = client.post("/v1/dicomweb/studies", content=data, headers={"content-type": ctype})
    assert (
        again.headers["X-Service4CT-Study-Id"] == study_id
        and again.headers["X-Service4CT-Existing"] == "true"
    )
    job = client.post("/v1/jobs", json={"study_id": study_id, "explain": "none"}).json()["job_id"]
    assert wait_job(client, job)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("parts", "ctype", "status", "code"),
    [
        ([b"not dicom at all"], None, 422, "dicom_invalid"),
        ([], None, 422, "no_dicom"),
        ([b"x"], "application/zip", 415, "unsupported_media_type"),
        ([b"x"], 'multipart/related; type="application/json"; boundary=b', 415, "unsupported_media_type"),
    ],
)
def test_stow_refusals(
    client: httpx.Client, parts: list[bytes], ctype: str | None, status: int, code: str
) -> None:
    body, default = multipart_body(parts)
    r = client.post(
        "/v1/dicomweb/studies", content=b"".join(body), headers={"content-type": ctype or default}
    )
    assert r.status_code == status and r.json()["error"] == code, r.text


def test_orthanc_refusal_is_read_from_the_failed_sop_sequence(orthanc: Orthanc) -> None:
    if not REAL.is_file():
        pytest.skip("real CT sample ../shared/data/real-ct/cap002.zip not present")
    with httpx.Client(timeout=60) as pacs:
        r = stow(pacs, orthanc.dicomweb, _files(REAL)[:2])  # UUID-string UIDs: Orthanc refuses them
    assert r.status_code == 200  # and says so only by not listing them as stored
    assert stow_failures(r.json(), 2) == ["2 instance(s) neither stored nor listed as failed"]


def test_push_to_an_unreachable_destination_is_retried(
    api: LiveApi, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    down = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing listens on loopback
    key = new_key(settings, "site-pacs-down")
    assert settings.database_url
    with connect(settings.database_url) as conn:
        add_endpoint(conn, "site-pacs-down", "destination", down)
    make_study(tmp_path / "s.zip", seed=43, **GRID)
    with api.client(key) as c:
        sid = c.post(
            "/v1/studies",
            content=(tmp_path / "s.zip").read_bytes(),
            headers={"content-type": "application/zip"},
        ).json()["study_id"]
        job = c.post("/v1/jobs", json={"study_id": sid, "explain": "none"}).json()["job_id"]
        assert wait_job(c, job)["state"] == "succeeded"

        def retried() -> dict[str, Any] | None:
            push = c.get(f"/v1/jobs/{job}/dicom").json()["push"]
            return push[0] if push and push[0]["attempts"] >= 2 else None

        row = wait_for(retried, timeout=30, interval=0.3, what="two push attempts")
    assert row["url"] == down and row["delivered_at"] is None and row["last_error"] == "ConnectError"


ROUTING_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "route-to-service4ct.lua"


def test_orthanc_routes_a_study_here_and_gets_the_results_back(
    api: LiveApi, worker: Worker, settings: Settings, tmp_path: Path
) -> None:
    """The docs/interop.md set-up: Orthanc's Lua script sends each stable CT series to the STOW-RS
    route with static headers (API key, X-Service4CT-Predict); the results come back by push, and
    their arrival in the study routes nothing again."""
    key = new_key(settings, "site-routing")
    peer = {
        "Url": f"{api.base}/v1/dicomweb/",
        "HttpHeaders": {"Authorization": f"Bearer {key}", "X-Service4CT-Predict": "gradcam"},
    }
    extra = {"LuaScripts": [str(ROUTING_SCRIPT)], "StableAge": 1}
    with running_orthanc(tmp_path / "orthanc", servers={"service4ct": peer}, **extra) as pacs_server:
        assert settings.database_url
        with connect(settings.database_url) as conn:
            add_endpoint(conn, "site-routing", "destination", pacs_server.dicomweb)

        def jobs() -> list[str]:
            assert settings.database_url
            with connect(settings.database_url) as conn:
                rows = conn.execute("SELECT id FROM jobs WHERE client = 'site-routing'").fetchall()
            return [str(r["id"]) for r in rows]

        info = make_study(tmp_path / "s.zip", seed=44, label=1, difficulty=(0.9, 1.0), **GRID)
        with httpx.Client(timeout=120) as pacs, api.client(key) as c:
            files = _files(tmp_path / "s.zip")
            assert stow_failures(stow(pacs, pacs_server.dicomweb, files).json(), len(files)) == []
            job = wait_for(jobs, timeout=60, interval=0.3, what="the series routed by Orthanc")[0]
            assert wait_job(c, job)["state"] == "succeeded"
            wait_for(
                lambda: (c.get(f"/v1/jobs/{job}/dicom").json()["push"] or [{}])[0].get("delivered_at"),
                timeout=60,
                interval=0.3,
                what="the push back to Orthanc",
            )
            series = pacs.get(f"{pacs_server.dicomweb}/studies/{info.study_uid}/series").json()
            assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "OT", "SEG", "SR"]
            time.sleep(4)  # the SR, SC and SEG series become stable too: they are not routed
            assert jobs() == [job]


def test_stow_with_predict_header_predicts_new_instances_once(
    client: httpx.Client, worker: Worker, tmp_path: Path
) -> None:
    make_study(tmp_path / "s.zip", seed=45, **GRID)
    body, ctype = multipart_body(_files(tmp_path / "s.zip"))
    data = b"".join(body)
    headers = {"content-type": ctype, "X-Service4CT-Predict": "none"}
    first = client.post("/v1/dicomweb/studies", content=data, headers=headers)
    assert first.status_code == 200, first.text
    job = first.headers["X-Service4CT-Job-Id"]
    status = wait_job(client, job)
    assert status["state"] == "succeeded" and status["study_id"] == first.headers["X-Service4CT-Study-Id"]
    again = client.post("/v1/dicomweb/studies", content=data, headers=headers)
    assert again.headers["X-Service4CT-Existing"] == "true" and "X-Service4CT-Job-Id" not in again.headers
    bad = client.post(
        "/v1/dicomweb/studies", content=data, headers={**headers, "X-Service4CT-Predict": "magic"}
    )
    assert bad.status_code == 422 and bad.json()["error"] == "validation_error"
