"""build_result (app/worker/pipeline.py): the JobResult the API serves, from a real QC report."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.config import DEFAULT_MANIFEST
from app.schemas import JobResult
from app.worker.pipeline import build_result
from ml.inference import Prediction
from ml.io import open_study, rank_series
from ml.model import Manifest


@pytest.fixture(scope="module")
def qc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The QC report of a phantom with a 1 mm and a 5 mm series and a scout (ranked, unusable)."""
    from ml.phantom import make_study

    zp = tmp_path_factory.mktemp("study") / "s.zip"
    make_study(zp, seed=3, variant="multi_series")
    with open_study(zp) as study:
        report: dict[str, Any] = rank_series(study).to_dict()
    return report


def test_build_result_is_the_served_contract(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    decisions = {name: name != "high_specificity" for name in entry.operating_points}
    pred = Prediction(probability=0.81, logit=1.4, label="pathology", decisions=decisions)
    job_id = uuid.uuid4()
    result = build_result(job_id, 2, entry, pred, qc, {"fetching": 0.123456, "total": 2.5})

    assert isinstance(result, JobResult)
    stored = result.model_dump(mode="json")  # what insert_result writes
    assert JobResult.model_validate(stored).model_dump(mode="json") == stored  # what the route serves
    assert stored["job_id"] == str(job_id) and stored["attempt"] == 2
    assert stored["timings"] == {"fetching": 0.1235, "total": 2.5}
    assert stored["model"] == {
        "name": entry.name,
        "version": entry.version,
        "sha256": entry.sha256 or "",
        "clinical_use": entry.clinical_use,
    }
    assert stored["not_for_clinical_use"] is (not entry.clinical_use)
    assert stored["operating_point"] == entry.default_operating_point
    assert stored["operating_points"].keys() == entry.operating_points.keys()
    for name, op in entry.operating_points.items():
        assert stored["operating_points"][name]["threshold"] == op.threshold
        assert stored["decision"][name] == ("pathology" if decisions[name] else "normal")
    assert stored["series"]["selected_uid"] == qc["selected_series_uid"]
    ranking = stored["series"]["ranking"]
    assert [r["series_uid"] for r in ranking] == [s["series_uid"] for s in qc["series"]]
    assert [r["slices"] for r in ranking] == [s["summary"]["slices"] for s in qc["series"]]
    assert any(not r["usable"] and r["reasons"] for r in ranking)  # the scout, with its reasons
    assert stored["qc"] == {"warnings": qc["warnings"], "skipped_files": qc["skipped_files"]}


def test_build_result_refuses_what_the_contract_refuses(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    with pytest.raises(ValueError):  # pydantic's ValidationError
        build_result(uuid.uuid4(), 1, entry, Prediction(1.5, 9.0, "pathology"), qc, {})
    with pytest.raises(ValueError):
        build_result(uuid.uuid4(), 1, entry, Prediction(0.5, 0.0, "maybe"), qc, {})
