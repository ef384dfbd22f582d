"""build_result (app/worker/pipeline.py): the JobResult the API serves, from a real QC report."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.config import DEFAULT_MANIFEST
from app.schemas import JobResult
from app.worker.pipeline import build_result
from ml.inference import OODResult, Prediction
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
    assert stored["qc"] == {
        "warnings": qc["warnings"],
        "skipped_files": qc["skipped_files"],
        "plausibility": None,
    }


def test_build_result_refuses_what_the_contract_refuses(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    with pytest.raises(ValueError):  # pydantic's ValidationError
        build_result(uuid.uuid4(), 1, entry, Prediction(1.5, 9.0, "pathology"), qc, {})
    with pytest.raises(ValueError):
        build_result(uuid.uuid4(), 1, entry, Prediction(0.5, 0.0, "maybe"), qc, {})


def test_an_indeterminate_prediction_decides_nothing(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    plausibility = {
        "lung_volume_ml": 0.0,
        "body_volume_ml": 9000.0,
        "max_lung_area_fraction": 0.0,
        "lung_extent_mm": 0.0,
        "scan_extent_mm": 200.0,
        "reasons": ["no_lungs_found"],
    }
    pred = Prediction(
        probability=0.999,
        logit=9.0,
        label="indeterminate",
        decisions=dict.fromkeys(entry.operating_points, True),
        ood=OODResult(method="mahalanobis", score=950.0, threshold=400.0, flagged=True),
        plausibility=plausibility,
        indeterminate_reasons=("out_of_distribution", "no_lungs_found"),
    )
    stored = build_result(uuid.uuid4(), 1, entry, pred, qc, {}).model_dump(mode="json")
    assert stored["label"] == "indeterminate"
    assert stored["probability"] == 0.999  # still reported
    assert stored["decision"] == dict.fromkeys(entry.operating_points, "indeterminate")
    assert stored["indeterminate_reasons"] == ["out_of_distribution", "no_lungs_found"]
    assert stored["ood"] == {"method": "mahalanobis", "score": 950.0, "threshold": 400.0, "flagged": True}
    assert stored["qc"]["plausibility"] == plausibility


def test_a_judged_prediction_reports_its_ood_check(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    ood = OODResult(method="energy", score=-7.5, threshold=-2.0, flagged=False)
    pred = Prediction(0.2, -1.4, "normal", dict.fromkeys(entry.operating_points, False), ood=ood)
    stored = build_result(uuid.uuid4(), 1, entry, pred, qc, {}).model_dump(mode="json")
    assert stored["label"] == "normal" and stored["indeterminate_reasons"] == []
    assert set(stored["decision"].values()) == {"normal"}
    assert stored["ood"]["flagged"] is False


def test_unknown_reason_codes_are_refused(qc: dict[str, Any]) -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST)
    entry = manifest.entries[manifest.default]
    pred = Prediction(0.5, 0.0, "indeterminate", indeterminate_reasons=("feels_odd",))
    with pytest.raises(ValueError):
        build_result(uuid.uuid4(), 1, entry, pred, qc, {})


def test_the_reason_codes_are_one_table() -> None:
    from typing import get_args

    from app.schemas import IndeterminateReason
    from ml.ood.plausibility import PLAUSIBILITY_REASONS
    from ml.ood.reasons import INDETERMINATE_REASONS, REASON_OUT_OF_DISTRIBUTION

    assert set(get_args(IndeterminateReason)) == set(INDETERMINATE_REASONS)
    assert set(INDETERMINATE_REASONS) == {REASON_OUT_OF_DISTRIBUTION, *PLAUSIBILITY_REASONS}
