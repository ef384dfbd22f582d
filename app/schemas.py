"""Request and response models: the OpenAPI contract the Laravel backend codes against.

Every model carries an example (shown at ``/docs``). Times are ISO 8601 UTC,
durations seconds, probabilities in [0, 1].
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    computed_field,
)

from app.schemas_detail import (
    ExplainedModel,
    ExplanationStats,
    IndeterminateReason,
    QCOut,
    QCReasonOut,
    SourceGeometry,
)
from app.schemas_explain import ExplainParams, ExplainParamsIn
from app.schemas_feedback import JobFeedback
from app.schemas_models import (
    Calibration,
    DicomPushOut,
    ModelMetrics,
    ModelOOD,
    ModelOperatingPoint,
    ModelPreprocess,
)
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
    "ViewerToken",
]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Stage = Literal["fetching", "reading", "qc", "preprocessing", "inference", "explaining", "saving"]

#: how fast a job is claimed: every worker takes urgent jobs (and routine ones waiting longer than
#: ``S4CT_PRIORITY_AGE_S``) before routine ones
Priority = Literal["urgent", "routine"]
METADATA_MAX_BYTES = 4096


def _small_json(v: dict[str, JsonValue]) -> dict[str, JsonValue]:
    try:
        encoded = orjson.dumps(v)
    except orjson.JSONEncodeError as e:  # e.g. nested deeper than 255 levels
        raise ValueError(f"metadata cannot be stored as JSON: {e}") from None
    if len(encoded) > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes as compact JSON")
    if b"\\u0000" in encoded:  # PostgreSQL's jsonb refuses NUL characters
        raise ValueError("metadata may not contain NUL characters")
    return v


#: no control characters (PostgreSQL text refuses NUL; the others have no place in a reference)
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
#: the caller's own reference of a study or job (e.g. its worklist row id): stored, echoed, filterable
ClientRef = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NO_CONTROL)]
#: the caller's own JSON object (at most 4 KiB as compact UTF-8 JSON): stored and echoed, never interpreted
Metadata = Annotated[dict[str, JsonValue], AfterValidator(_small_json)]
_CLIENT_REF_DOC = "your own reference (≤ 128 characters), echoed in status, result, lists and webhooks"
_METADATA_DOC = "your own JSON object (≤ 4 KiB), echoed in status, result, lists and webhooks"

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
    client_ref: str | None = Field(None, description="the X-Client-Ref of the upload")
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict, description="the X-Client-Metadata of the upload (a JSON object)"
    )


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
        None,
        max_length=64,
        pattern=r"^[0-9]+(\.[0-9]+)*$",
        description="use this series (a DICOM UID: digits and dots) instead of the best-ranked one; "
        "see GET /v1/studies/{id}/series",
    )
    explain: ExplainMethod = Field("gradcam", description="saliency method computed after prediction")
    explain_params: ExplainParamsIn = Field(
        default_factory=dict,
        description=(
            'method parameters, e.g. {"steps": 32} for integrated_gradients; integrated_gradients and '
            "saliency take smooth_voxels (σ of a Gaussian blur, model voxels; default 3 for IG, 0 = raw); "
            'every method takes nifti: "uint8" (default, 8 bits with scl_slope) or "float32" (the exact map)'
        ),
    )
    callback_url: AnyHttpUrl | None = Field(None, description="POSTed (signed) when the job finishes")
    priority: Priority = Field(
        "routine", description="`urgent` jobs are claimed before `routine` ones by every worker"
    )
    client_ref: ClientRef | None = Field(None, description=_CLIENT_REF_DOC)
    metadata: Metadata = Field(default_factory=dict, description=_METADATA_DOC)


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
                    "priority": "urgent",
                    "client_ref": "worklist-4711",
                    "metadata": {"accession_row": 4711, "ward": "ER"},
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
    params: ExplainParamsIn = Field(
        default_factory=dict, description="the method's parameters (see `explain_params` of POST /v1/jobs)"
    )
    callback_url: AnyHttpUrl | None = None
    priority: Priority = "routine"


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
        priority="urgent",
        label=None,
        client_ref="worklist-4711",
        metadata={"ward": "ER"},
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
    priority: Priority = "routine"
    label: Literal["normal", "pathology", "indeterminate"] | None = Field(
        None, description="the result's label once a prediction succeeded (null otherwise)"
    )
    client_ref: str | None = Field(None, description="as given at creation")
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="as given at creation")
    feedback: JobFeedback | None = Field(
        None, description="readers' current answers and the ground truth (null: none yet)"
    )


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
    reasons: list[QCReasonOut]


class SeriesOut(BaseModel):
    selected_uid: str
    ranking: list[SeriesRank]


Label = Literal["normal", "pathology", "indeterminate"]
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
    qc: QCOut
    timings: dict[str, float]
    attempt: int
    not_for_clinical_use: bool
    client_ref: str | None = Field(None, description="the job's client_ref")
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="the job's metadata")


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
    params: ExplainParams = Field(description="the method's parameters as it ran (defaults filled in)")
    stats: ExplanationStats = Field(
        description=(
            "stats.json: max, peak, regions, layers, timings, and outside_body_fraction (share of the "
            "positive attribution outside the patient's body before the map was masked to the body; "
            "null when no body was found and the map is unmasked)"
        )
    )
    geometry: SourceGeometry
    model: ExplainedModel
    files: dict[str, BlobLink]
    created_at: dt.datetime


class ModelCard(BaseModel):
    name: str
    version: str
    default: bool
    arch: str
    input_size: list[int]
    preprocess: ModelPreprocess
    operating_points: dict[str, ModelOperatingPoint]
    default_operating_point: str
    calibration: Calibration
    metrics: ModelMetrics
    training_data: str
    intended_use: str
    clinical_use: bool
    sha256: str | None
    license: str | None
    notes: str | None
    ood: ModelOOD | None = Field(
        default=None,
        description="the out-of-distribution statistics published with the weights (method, threshold, "
        "fitted_on, n, in_distribution_rate); null: the model cannot answer `indeterminate` for "
        "out-of-distribution studies (the pixel plausibility check still runs)",
    )
    unavailable_reason: str | None = Field(
        default=None,
        description="why the model cannot be served (no sha256, weight or OOD file missing, wrong sha256); "
        "null: it can. Jobs for it are refused with 422 `model_unavailable`",
    )
    shadow_of: str | None = Field(
        default=None,
        description="the primary model this one shadows (it runs beside it on a share of its jobs, its "
        "answers are never served); null: a model jobs may ask for. Jobs for a shadow: 422 `model_is_shadow`",
    )

    @computed_field(description="false: jobs for this model are refused (see `unavailable_reason`)")  # type: ignore[prop-decorator]
    @property
    def available(self) -> bool:
        return self.unavailable_reason is None


class ModelsOut(BaseModel):
    default: str
    models: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class ViewerToken(BaseModel):
    """A short-lived read-only token for one job (``POST /v1/jobs/{id}/viewer-token``).

    Accepted as ``Authorization: Bearer <token>`` on ``GET /v1/jobs/{id}``, ``/result`` and
    ``/explanation`` of that job (and of its parent, for an explain job) only; it stops
    when it expires or when the API key that issued it is revoked. Hand it to the viewer
    in memory (``postMessage`` or the page's form), never in a URL.
    """

    model_config = _example(
        token="s4cv_3q2-7wB0bXh0l0oJ3kKJqjGZcJ2b8Z2m4v9xq1x3h0s",
        token_type="Bearer",
        job_id="0b7c3f0e-5d1a-4a8e-9d4b-2f6c1e9a7b31",
        jobs=["0b7c3f0e-5d1a-4a8e-9d4b-2f6c1e9a7b31"],
        expires_in=600,
        expires_at="2026-01-01T12:10:00Z",
        viewer_url="/viewer/0b7c3f0e-5d1a-4a8e-9d4b-2f6c1e9a7b31",
    )

    token: str
    token_type: Literal["Bearer"] = "Bearer"
    job_id: uuid.UUID
    jobs: list[uuid.UUID] = Field(description="the jobs it reads: this one (and an explain job's parent)")
    expires_in: int = Field(description="seconds")
    expires_at: dt.datetime
    viewer_url: str = Field(description="the reference viewer page of this job (the token is not in it)")


def check_explain_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of a request as given, if ``method`` takes them; raises ValueError naming the offending key.

    The rules are :data:`ml.explain.METHODS`' parameters that a request may set
    (the worker resolves the same parameters again for the model's input size).
    """
    check_params(method, params, api=True)
    return dict(params)


# --- DICOM results (docs/interop.md)


class DicomObjectOut(BaseModel):
    """One DICOM result of a job: an SR (``sr``), a Secondary Capture (``sc``), a Segmentation (``seg``)."""

    kind: Literal["sr", "sc", "seg"]
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str = Field(
        description="the source study's: the object belongs in the patient's study"
    )
    size_bytes: int
    content_type: Literal["application/dicom"] = "application/dicom"
    download: str = Field(description="API path streaming the object (`application/dicom`)")
    url: str = Field(description="presigned URL of the object, valid until `expires_at`")
    expires_at: str


class DicomList(BaseModel):
    job_id: uuid.UUID
    objects: list[DicomObjectOut]
    push: list[DicomPushOut] = Field(
        default_factory=list,
        description="STOW-RS pushes to the client's DICOMweb destination: url, attempts, delivered_at, "
        "dead_at, last_status, last_error",
    )


_UID = r"^[0-9]+(\.[0-9]+)*$"


class ImportRequest(PredictRequest):
    """``POST /v1/studies/import``: predict a study fetched from a PACS by WADO-RS (by the worker)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dicomweb_url": "http://pacs.hospital.local:8042/dicom-web",
                    "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
                    "explain": "gradcam",
                }
            ]
        },
    )
    dicomweb_url: str = Field(
        max_length=2000, description="one of the client's configured DICOMweb source endpoints (its base URL)"
    )
    study_instance_uid: str = Field(max_length=64, pattern=_UID)
    series_instance_uid: str | None = Field(
        None, max_length=64, pattern=_UID, description="fetch (and predict) this series only"
    )
