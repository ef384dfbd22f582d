"""GET /v1/jobs/{id}/fhir's body: an R4 DiagnosticReport, validated with fhir.resources (R4B models)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.fhir import CODE_SYSTEM, diagnostic_report
from app.schemas import JobResult

R4B = pytest.importorskip("fhir.resources.R4B.diagnosticreport", reason="fhir.resources is not installed")
from fhir.resources.R4B.device import Device  # noqa: E402
from fhir.resources.R4B.observation import Observation  # noqa: E402


def _result(**kw: Any) -> JobResult:
    body = JobResult.model_json_schema()["examples"][0] | kw
    return JobResult.model_validate(body)


@pytest.mark.parametrize(
    ("label", "reasons", "interpretation"),
    [("pathology", [], "POS"), ("normal", [], "NEG"), ("indeterminate", ["out_of_distribution"], "IND")],
)
def test_diagnostic_report_validates_and_carries_the_result(
    label: str, reasons: list[str], interpretation: str
) -> None:
    result = _result(label=label, indeterminate_reasons=reasons, probability=0.4321)
    finished = dt.datetime(2026, 12, 7, 10, 0, 5, tzinfo=dt.UTC)
    body = diagnostic_report(result, finished)
    report = R4B.DiagnosticReport.model_validate(body)  # raises on anything R4 does not allow
    assert report.status == "preliminary"
    assert report.conclusionCode[0].coding[0].system == CODE_SYSTEM
    assert report.conclusionCode[0].coding[0].code == label
    assert report.code.coding[0].code == "24627-2"
    assert report.effectiveDateTime is not None and report.result[0].reference == "#probability"
    contained = {r["id"]: r for r in body["contained"]}
    obs = contained["probability"]
    assert Observation.model_validate(obs).status == "preliminary"
    Device.model_validate(contained["model"])
    assert obs["valueQuantity"] == {
        "value": 0.4321,
        "unit": "1",
        "system": "http://unitsofmeasure.org",
        "code": "1",
    }
    assert obs["interpretation"][0]["coding"][0]["code"] == interpretation
    assert obs["device"] == {"reference": "#model"}
    assert contained["model"]["deviceName"][0]["name"] == result.model.name
    assert ("Not for clinical use." in report.conclusion) == result.not_for_clinical_use
    for r in reasons:
        assert r in report.conclusion


def test_clinical_model_has_no_flag() -> None:
    result = _result(not_for_clinical_use=False)
    body = diagnostic_report(result, None)
    R4B.DiagnosticReport.model_validate(body)
    assert "Not for clinical use" not in body["conclusion"]
    assert "note" not in body["contained"][0]
