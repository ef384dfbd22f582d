"""A predicted job's hospital-facing results: DICOM SR and Secondary Capture, FHIR DiagnosticReport.

A real worker predicts a phantom study; its DICOM results belong in the phantom's study,
pass dciodvfy and read back; the real sample (UUID-string UIDs) still predicts and its
DICOM results are refused with their code.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from conftest import LiveApi, new_key, wait_job  # type: ignore[import-not-found]
from dicomcheck import dciodvfy_errors  # type: ignore[import-not-found]

from app.config import Settings
from app.worker.runner import Worker
from ml.phantom import make_study

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-ct" / "cap002.zip"
GRID: dict[str, Any] = {"rows": 128, "cols": 128, "pixel_spacing_mm": 3.0, "slice_spacing_mm": 2.5}


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, "site-interop")) as c:
        yield c


def _predict(c: httpx.Client, zip_bytes: bytes, explain: str = "gradcam") -> str:
    r = c.post("/v1/studies", content=zip_bytes, headers={"content-type": "application/zip"})
    assert r.status_code in (200, 201), r.text
    r = c.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": explain})
    assert r.status_code == 202, r.text
    job: str = r.json()["job_id"]
    status = wait_job(c, job)
    assert status["state"] == "succeeded", status
    return job


def test_dicom_results_in_the_source_study(client: httpx.Client, worker: Worker, tmp_path: Path) -> None:
    zp = tmp_path / "s.zip"
    info = make_study(zp, seed=31, label=1, difficulty=(0.9, 1.0), **GRID)
    job = _predict(client, zp.read_bytes())
    result = client.get(f"/v1/jobs/{job}/result").json()

    listing = client.get(f"/v1/jobs/{job}/dicom")
    assert listing.status_code == 200, listing.text
    objects = {o["kind"]: o for o in listing.json()["objects"]}
    assert set(objects) == {"sr", "sc", "seg"}
    for kind, o in objects.items():
        r = client.get(o["download"])
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text
        presigned = httpx.get(o["url"])  # the presigned URL serves the same bytes, as application/dicom
        assert presigned.content == r.content and presigned.headers["content-type"] == "application/dicom"
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(r.content)
        assert dciodvfy_errors(path) == [], kind
        ds = pydicom.dcmread(io.BytesIO(r.content))
        assert ds.SOPInstanceUID == o["sop_instance_uid"] and ds.StudyInstanceUID == o["study_instance_uid"]
        assert ds.StudyInstanceUID == info.study_uid  # in the patient's study, in a new series
        assert ds.SeriesInstanceUID not in {s.series_uid for s in info.series}
        assert str(ds.PatientID) == info.identifiers.patient_id
    sr_bytes = client.get(objects["sr"]["download"]).content
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(sr_bytes)))
    nums = hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.NUM, recursive=True)
    prob = [
        float(n.MeasuredValueSequence[0].NumericValue)
        for n in nums
        if n.ConceptNameCodeSequence[0].CodeValue == "S4CT-PROB"
    ]
    assert prob == [pytest.approx(result["probability"], abs=1e-6)]

    seg = hd.seg.segread(io.BytesIO(client.get(objects["seg"]["download"]).content))
    with zipfile.ZipFile(zp) as z:
        ct = pydicom.dcmread(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith(".dcm")))))
    assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID  # in the source frame of reference
    refs = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert refs and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.primary_series_uid
    assert seg.NumberOfFrames == len(refs)  # one frame per source slice that holds the region

    fhir = client.get(f"/v1/jobs/{job}/fhir")
    assert fhir.status_code == 200 and fhir.headers["content-type"] == "application/fhir+json"
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    report = DiagnosticReport.model_validate(fhir.json())
    assert report.conclusionCode[0].coding[0].code == result["label"]

    assert client.get(f"/v1/jobs/{job}/dicom/1.2.3.4").json()["error"] == "dicom_not_found"


def test_no_explanation_gives_the_sr_only(client: httpx.Client, worker: Worker, tmp_path: Path) -> None:
    zp = tmp_path / "s.zip"
    make_study(zp, seed=32, **GRID)
    job = _predict(client, zp.read_bytes(), explain="none")
    kinds = [o["kind"] for o in client.get(f"/v1/jobs/{job}/dicom").json()["objects"]]
    assert kinds == ["sr"]


def test_real_sample_predicts_and_its_dicom_results_are_refused(client: httpx.Client, worker: Worker) -> None:
    if not REAL.is_file():
        pytest.skip("real CT sample ../shared/data/real-ct/cap002.zip not present")
    job = _predict(client, REAL.read_bytes(), explain="none")
    assert client.get(f"/v1/jobs/{job}/result").status_code == 200
    r = client.get(f"/v1/jobs/{job}/dicom")
    assert r.status_code == 422 and r.json()["error"] == "dicom_source_uids_invalid", r.text
    assert "StudyInstanceUID" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{job}/fhir").status_code == 200  # FHIR needs no DICOM UIDs
