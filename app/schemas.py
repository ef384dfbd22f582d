"""Request and response models: the OpenAPI contract the Laravel backend codes against.

Every model carries an example (shown at ``/docs``). Times are ISO 8601 UTC,
durations seconds, probabilities in [0, 1].
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from ml.explain import ExplainMethod, MethodName, check_params
from ml.ood.reasons import INDETERMINATE_REASONS

__all__ = [
    "ErrorBody",
    "ExplainRequest",
    "Explanation",
    "JobAccepted",
    "JobCreate",
    "JobResult",
    "JobStatus",
    "ModelCard",
    "ModelsOut",
    "PredictRequest",
    "StudyOut",
]

JobState = Literal["queued", "running", "succeeded", "failed"]
Stage = Literal["fetching", "reading", "qc", "preprocessing", "inference", "explaining", "saving"]

_UUID_EX = "0b4f6c2e-5d7a-4f57-9a51-3c3f0d2e9a10"
_JOB_EX = "8d0e7f5a-2b1c-4e8f-9d3a-6f1b2c3d4e5f"


def _example(**kw: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [kw]})


class ErrorBody(BaseModel):
    """Every error answer (docs/architecture.md §3.2)."""

    model_config = _example(error="zip_invalid", detail="not a readable ZIP archive", request_id="5f0c…")
    error: str = Field(description="stable snake_case code; see the error table in the API description")
    detail: str
    request_id: str | None = None


class StudyOut(BaseModel):
    model_config = _example(
        study_id=_UUID_EX,
        sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        size_bytes=73400320,
        files=312,
        uncompressed_bytes=164102144,
        created_at="2026-11-23T10:00:00Z",
        existing=False,
    )
    study_id: uuid.UUID
    sha256: str = Field(description="sha256 of the uploaded ZIP bytes (hex)")
    size_bytes: int
    files: int = Field(description="file members declared by the archive's central directory")
    uncompressed_bytes: int
    created_at: dt.datetime
    existing: bool = Field(False, description="true if this client had uploaded the same bytes before")


class PredictRequest(BaseModel):
    """Options of a prediction (``POST /v1/studies/{id}/predict``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"explain": "gradcam", "callback_url": "https://laravel.example/api/s4ct/webhook"}]
        },
    )
    model: str | None = Field(None, description="model name from GET /v1/models; default: the manifest's")
    series_uid: str | None = Field(
        None, max_length=64, description="use this series instead of the best-ranked one"
    )
    explain: ExplainMethod = Field("gradcam", description="saliency method computed after prediction")
    explain_params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            'method parameters, e.g. {"steps": 32} for integrated_gradients; integrated_gradients and '
            "saliency take smooth_voxels (σ of a Gaussian blur, model voxels; default 3 for IG, 0 = raw); "
            'every method takes nifti: "uint8" (default, 8 bits with scl_slope) or "float32" (the exact map)'
        ),
    )
    callback_url: AnyHttpUrl | None = Field(None, description="POSTed (signed) when the job finishes")


class JobCreate(PredictRequest):
    """``POST /v1/jobs``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "study_id": _UUID_EX,
                    "explain": "gradcam",
                    "callback_url": "https://laravel.example/api/s4ct/webhook",
                }
            ]
        },
    )
    study_id: uuid.UUID


class ExplainRequest(BaseModel):
    """``POST /v1/jobs/{id}/explain``: explain a predicted job with another method."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"method": "integrated_gradients", "params": {"steps": 32}}]},
    )
    method: MethodName
    params: dict[str, Any] = Field(default_factory=dict)
    callback_url: AnyHttpUrl | None = None


class Links(BaseModel):
    status: str
    result: str
    explanation: str


class JobAccepted(BaseModel):
    model_config = _example(
        job_id=_JOB_EX,
        state="queued",
        status_url=f"/v1/jobs/{_JOB_EX}",
        links={
            "status": f"/v1/jobs/{_JOB_EX}",
            "result": f"/v1/jobs/{_JOB_EX}/result",
            "explanation": f"/v1/jobs/{_JOB_EX}/explanation",
        },
    )
    job_id: uuid.UUID
    state: JobState
    status_url: str
    links: Links


class JobError(BaseModel):
    code: str
    detail: str | None = None


class JobStatus(BaseModel):
    model_config = _example(
        job_id=_JOB_EX,
        study_id=_UUID_EX,
        kind="predict",
        state="running",
        stage="preprocessing",
        progress=0.4,
        attempt=1,
        max_attempts=3,
        queue_position=None,
        eta_s=3.2,
        model="resnet10-demo",
        explain="gradcam",
        error=None,
        created_at="2026-11-23T10:00:00Z",
        started_at="2026-11-23T10:00:01Z",
        finished_at=None,
        updated_at="2026-11-23T10:00:02Z",
        stage_timings={"fetching": 0.21, "reading": 1.3},
    )
    job_id: uuid.UUID
    study_id: uuid.UUID | None = Field(description="null once the study was deleted")
    kind: Literal["predict", "explain"]
    parent_job_id: uuid.UUID | None = None
    state: JobState
    stage: Stage | None
    progress: float
    attempt: int
    max_attempts: int
    queue_position: int | None = Field(description="jobs ahead of this one (queued jobs only)")
    eta_s: float | None = Field(description="estimated seconds to completion, from recent job timings")
    model: str
    explain: ExplainMethod
    error: JobError | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime
    stage_timings: dict[str, float]
    links: Links


class OperatingPointOut(BaseModel):
    threshold: float
    sensitivity: float | None
    specificity: float | None
    ci95: dict[str, list[float] | None]


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str
    clinical_use: bool


class SeriesRank(BaseModel):
    series_uid: str
    rank: int | None
    usable: bool
    slices: int
    reasons: list[dict[str, Any]]


class SeriesOut(BaseModel):
    selected_uid: str
    ranking: list[SeriesRank]


Label = Literal["normal", "pathology", "indeterminate"]
IndeterminateReason = Literal[
    "out_of_distribution", "implausible_hu", "no_lungs_found", "incomplete_chest_coverage"
]
_REASONS_DOC = "; ".join(f"`{k}`: {v}" for k, v in INDETERMINATE_REASONS.items())


class OODOut(BaseModel):
    """The model's out-of-distribution check of this study (same forward pass as the prediction)."""

    method: str = Field(description="the score: `mahalanobis`, `energy` or `msp`")
    score: float = Field(
        description="higher = less like the studies the model's OOD statistics were fitted on"
    )
    threshold: float = Field(
        description="flagged above this (keeps 95 % of held-out in-distribution studies)"
    )
    flagged: bool


class JobResult(BaseModel):
    """The result contract (docs/architecture.md §3.5)."""

    model_config = _example(
        job_id=_JOB_EX,
        probability=0.93,
        label="pathology",
        operating_point="balanced",
        operating_points={
            "balanced": {
                "threshold": 0.70,
                "sensitivity": 0.73,
                "specificity": 0.93,
                "ci95": {"sensitivity": [0.63, 0.85], "specificity": [0.87, 0.98]},
            }
        },
        decision={"balanced": "pathology", "high_sensitivity": "pathology", "high_specificity": "pathology"},
        indeterminate_reasons=[],
        ood={"method": "mahalanobis", "score": 212.4, "threshold": 402.0, "flagged": False},
        model={"name": "resnet10-demo", "version": "0.1.0", "sha256": "dd2f…", "clinical_use": False},
        series={"selected_uid": "1.2.826.0.1.3680043.8.498.1", "ranking": []},
        qc={"warnings": []},
        timings={"fetching": 0.2, "reading": 1.1, "preprocessing": 0.9, "inference": 0.15, "total": 2.6},
        attempt=1,
        not_for_clinical_use=True,
    )
    job_id: uuid.UUID
    probability: float = Field(ge=0, le=1, description="calibrated probability of pathology")
    label: Label = Field(
        description="decision at the default operating point, or `indeterminate` when the model cannot judge "
        "this study (see `indeterminate_reasons`; the probability is still reported but is not a decision)"
    )
    operating_point: str = Field(description="name of the default operating point")
    operating_points: dict[str, OperatingPointOut]
    decision: dict[str, Label] = Field(
        description="decision per operating point; every one is `indeterminate` when the label is"
    )
    indeterminate_reasons: list[IndeterminateReason] = Field(
        default_factory=list,
        description=f"why the label is `indeterminate` (empty otherwise): {_REASONS_DOC}",
    )
    ood: OODOut | None = Field(
        default=None, description="the out-of-distribution check; null when the model has no OOD statistics"
    )
    model: ModelRef
    series: SeriesOut
    qc: dict[str, Any]
    timings: dict[str, float]
    attempt: int
    not_for_clinical_use: bool


class BlobLink(BaseModel):
    url: str
    content_type: str
    expires_at: dt.datetime


class Explanation(BaseModel):
    model_config = _example(
        job_id=_JOB_EX,
        method="gradcam",
        params={},
        stats={"max": 0.98, "peak": {"lps_mm": [-61.0, 20.5, -140.0]}, "outside_body_fraction": 0.12},
        geometry={"shape_zyx": [120, 512, 512], "spacing_mm_xyz": [0.7, 0.7, 2.5]},
        model={"name": "resnet10-demo", "version": "0.1.0"},
        files={
            "nifti": {
                "url": "https://s3…/saliency.nii.gz?X-Amz-…",
                "content_type": "application/gzip",
                "expires_at": "2026-11-23T10:15:00Z",
            }
        },
        created_at="2026-11-23T10:00:05Z",
    )
    job_id: uuid.UUID
    method: str
    params: dict[str, Any]
    stats: dict[str, Any] = Field(
        description=(
            "stats.json: max, peak, regions, layers, timings, and outside_body_fraction (share of the "
            "positive attribution outside the patient's body before the map was masked to the body; "
            "null when no body was found and the map is unmasked)"
        )
    )
    geometry: dict[str, Any]
    model: dict[str, str]
    files: dict[str, BlobLink]
    created_at: dt.datetime


class ModelCard(BaseModel):
    name: str
    version: str
    default: bool
    arch: str
    input_size: list[int]
    preprocess: dict[str, Any]
    operating_points: dict[str, Any]
    default_operating_point: str
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    training_data: str
    intended_use: str
    clinical_use: bool
    sha256: str | None
    license: str | None
    notes: str | None
    ood: dict[str, Any] | None = Field(
        default=None,
        description="the out-of-distribution statistics published with the weights (method, threshold, "
        "fitted_on, n, in_distribution_rate); null: the model cannot answer `indeterminate` for "
        "out-of-distribution studies (the pixel plausibility check still runs)",
    )


class ModelsOut(BaseModel):
    default: str
    models: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


def check_explain_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of a request as given, if ``method`` takes them; raises ValueError naming the offending key.

    The rules are :data:`ml.explain.METHODS`' parameters that a request may set
    (the worker resolves the same parameters again for the model's input size).
    """
    check_params(method, params, api=True)
    return dict(params)
