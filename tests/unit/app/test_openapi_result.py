"""The OpenAPI document (app.main) describes indeterminate results: label, decisions, reasons, ood block."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.main import create_app
from app.schemas import JobResult
from ml.ood.reasons import INDETERMINATE_REASONS
from ml.ood.scores import OOD_METHODS

LABELS = ["normal", "pathology", "indeterminate"]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc: dict[str, Any] = create_app(Settings()).openapi()  # no services needed to build the document
    return doc


def _schema(spec: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref is None:
        return ref_or_schema
    out: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return out


def test_the_result_route_answers_the_result_contract(spec: dict[str, Any]) -> None:
    ok = spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobResult"}


def test_label_and_every_decision_may_be_indeterminate(spec: dict[str, Any]) -> None:
    props = spec["components"]["schemas"]["JobResult"]["properties"]
    label = _schema(spec, props["label"])
    assert label["enum"] == LABELS
    assert "indeterminate_reasons" in label["description"] and "probability" in label["description"]
    decision = props["decision"]
    assert decision["type"] == "object" and _schema(spec, decision["additionalProperties"])["enum"] == LABELS
    assert "indeterminate" in decision["description"]


def test_indeterminate_reasons_list_the_stable_codes_with_their_meaning(spec: dict[str, Any]) -> None:
    result = spec["components"]["schemas"]["JobResult"]
    reasons = result["properties"]["indeterminate_reasons"]
    assert reasons["type"] == "array"
    assert _schema(spec, reasons["items"])["enum"] == list(INDETERMINATE_REASONS)
    assert {"out_of_distribution", "no_lungs_found"} <= set(INDETERMINATE_REASONS)
    for code, meaning in INDETERMINATE_REASONS.items():
        assert f"`{code}`: {meaning}" in reasons["description"], code
    assert "indeterminate_reasons" not in result.get("required", [])  # older results have none: []


def test_the_ood_object_is_documented(spec: dict[str, Any]) -> None:
    result = spec["components"]["schemas"]["JobResult"]
    ood = result["properties"]["ood"]
    variants = ood["anyOf"]
    assert {"type": "null"} in variants and "no OOD statistics" in ood["description"]
    obj = _schema(spec, next(v for v in variants if "$ref" in v))
    assert set(obj["required"]) == set(obj["properties"]) == {"method", "score", "threshold", "flagged"}
    types = {k: v["type"] for k, v in obj["properties"].items()}
    assert types == {"method": "string", "score": "number", "threshold": "number", "flagged": "boolean"}
    for method in OOD_METHODS:
        assert f"`{method}`" in obj["properties"]["method"]["description"], method
    assert obj["description"] and obj["properties"]["threshold"]["description"]


def test_the_documented_example_is_a_valid_result(spec: dict[str, Any]) -> None:
    (example,) = spec["components"]["schemas"]["JobResult"]["examples"]
    parsed = JobResult.model_validate(example)
    assert parsed.ood is not None and parsed.indeterminate_reasons == []
    indeterminate = {
        **example,
        "label": "indeterminate",
        "decision": dict.fromkeys(example["decision"], "indeterminate"),
        "indeterminate_reasons": ["out_of_distribution", "no_lungs_found"],
        "ood": {**example["ood"], "score": 980.0, "flagged": True},
    }
    assert JobResult.model_validate(indeterminate).label == "indeterminate"
    with pytest.raises(ValueError, match="indeterminate_reasons"):
        JobResult.model_validate({**indeterminate, "indeterminate_reasons": ["looks_odd"]})
