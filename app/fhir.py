"""The FHIR R4 view of a prediction: a DiagnosticReport with its Observation and Device contained.

``GET /v1/jobs/{id}/fhir`` (docs/interop.md, FHIR mapping). The report is
``preliminary`` (a machine result for a reader to confirm); its ``conclusionCode`` is the
label (``pathology``, ``normal`` or ``indeterminate``) in the service's code system, its
``result`` the contained Observation of the calibrated probability (UCUM ``1``) with the
label as interpretation and the model as contained Device. No patient data: the
hospital's interface engine links the report to its patient and imaging study (the
``identifier`` is the job id; the DICOM SR carries the same finding inside the study).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.schemas import JobResult

__all__ = ["CODE_SYSTEM", "diagnostic_report"]

#: the service's code system (labels, the probability, indeterminate reasons)
CODE_SYSTEM = "urn:service4ct:triage"
_LABELS = {
    "pathology": "Pathology suspected (chest CT triage)",
    "normal": "No pathology suspected (chest CT triage)",
    "indeterminate": "Indeterminate: the model cannot judge this study",
}
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_INTERPRETATION_CODES = {
    "pathology": ("POS", "Positive"),
    "normal": ("NEG", "Negative"),
    "indeterminate": ("IND", "Indeterminate"),
}


def _iso(v: dt.datetime | None) -> str:
    v = v or dt.datetime.now(dt.UTC)
    return v.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _label(label: str) -> dict[str, Any]:
    return {
        "coding": [{"system": CODE_SYSTEM, "code": label, "display": _LABELS[label]}],
        "text": _LABELS[label],
    }


def _conclusion(r: JobResult, threshold: float) -> str:
    text = (
        f"{_LABELS[r.label]}: calibrated probability {r.probability:.3f} "
        f"(operating point {r.operating_point}, threshold {threshold:.3f}; "
        f"model {r.model.name} {r.model.version})."
    )
    if r.indeterminate_reasons:
        text += " Reasons: " + ", ".join(r.indeterminate_reasons) + "."
    if r.not_for_clinical_use:
        text += " Not for clinical use."
    return text


def diagnostic_report(result: JobResult, finished_at: dt.datetime | None) -> dict[str, Any]:
    """The DiagnosticReport (a JSON-able dict) of a succeeded predict job's result."""
    op = result.operating_points.get(result.operating_point)
    threshold = op.threshold if op is not None else 0.0
    when = _iso(finished_at)
    code, display = _INTERPRETATION_CODES[result.label]
    device = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": result.model.name, "type": "model-name"}],
        "version": [{"value": result.model.version}],
        "identifier": [{"system": "urn:service4ct:model-sha256", "value": result.model.sha256 or "unknown"}],
        "manufacturer": "Service4CT",
        "note": [{"text": "Not for clinical use."}] if result.not_for_clinical_use else [],
    }
    if not device["note"]:
        del device["note"]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "probability",
        "status": "preliminary",
        "code": {
            "coding": [
                {
                    "system": CODE_SYSTEM,
                    "code": "probability",
                    "display": "Calibrated probability of pathology",
                }
            ],
            "text": "Calibrated probability of pathology",
        },
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": round(float(result.probability), 6),
            "unit": "1",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        },
        "interpretation": [{"coding": [{"system": _INTERPRETATION, "code": code, "display": display}]}],
        "device": {"reference": "#model"},
        "method": {"text": f"operating point {result.operating_point} (threshold {threshold:.4f})"},
    }
    if result.indeterminate_reasons:
        observation["note"] = [{"text": "indeterminate: " + ", ".join(result.indeterminate_reasons)}]
    return {
        "resourceType": "DiagnosticReport",
        "id": str(result.job_id),
        "contained": [device, observation],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{result.job_id}"}],
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
            "text": "CT Chest AI triage",
        },
        "effectiveDateTime": when,
        "issued": when,
        "performer": [{"display": "Service4CT"}],
        "result": [{"reference": "#probability"}],
        "conclusion": _conclusion(result, threshold),
        "conclusionCode": [_label(result.label)],
    }
