"""The API's JSON bodies as TypedDicts: the top-level fields of the OpenAPI components of the same
name (``clients/typescript/openapi.json``; tests/unit/clients/test_client_kits.py compares them).
Nested blocks the client does not interpret (QC, statistics, geometry, model card blocks) are
plain JSON objects here; the OpenAPI document and the TypeScript types describe them in full."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Label = Literal["normal", "pathology", "indeterminate"]
Json = dict[str, Any]

#: the TypedDicts named after an OpenAPI component
__all__ = [
    "BlobLink",
    "ErrorBody",
    "Explanation",
    "FeedbackEntry",
    "FeedbackHistory",
    "JobAccepted",
    "JobError",
    "JobFeedback",
    "JobPage",
    "JobResult",
    "JobStatus",
    "Links",
    "ModelCard",
    "ModelsOut",
    "Performance",
    "StudyOut",
    "StudyPage",
    "ViewerToken",
]


class ErrorBody(TypedDict):
    error: str
    detail: str
    request_id: NotRequired[str | None]


class StudyOut(TypedDict):
    study_id: str
    sha256: str
    size_bytes: int
    files: int
    uncompressed_bytes: int
    created_at: str
    existing: bool
    client_ref: str | None
    metadata: Json


class StudyPage(TypedDict):
    items: list[StudyOut]
    next_cursor: str | None


class Links(TypedDict):
    status: str
    result: str
    explanation: str


class JobAccepted(TypedDict):
    job_id: str
    state: JobState
    status_url: str
    links: Links


class JobError(TypedDict):
    code: str
    detail: NotRequired[str | None]


GroundTruth = Literal["normal", "pathology"]


class FeedbackEntry(TypedDict):
    reader: str
    ground_truth: GroundTruth
    agrees: bool | None
    comment: str | None
    current: bool
    created_at: str


class JobFeedback(TypedDict):
    ground_truth: GroundTruth
    readers: list[FeedbackEntry]


class FeedbackHistory(TypedDict):
    job_id: str
    feedback: JobFeedback | None
    history: list[FeedbackEntry]


class JobStatus(TypedDict):
    job_id: str
    study_id: str | None
    kind: Literal["predict", "explain"]
    parent_job_id: str | None
    state: JobState
    stage: str | None
    progress: float
    attempt: int
    max_attempts: int
    queue_position: int | None
    eta_s: float | None
    model: str
    explain: str
    error: JobError | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    stage_timings: dict[str, float]
    links: Links
    priority: Literal["urgent", "routine"]
    label: Label | None
    client_ref: str | None
    metadata: Json
    feedback: NotRequired[JobFeedback | None]


class JobPage(TypedDict):
    items: list[JobStatus]
    next_cursor: str | None


class JobResult(TypedDict):
    job_id: str
    probability: float
    label: Label
    operating_point: str
    operating_points: dict[str, Json]
    decision: dict[str, Label]
    indeterminate_reasons: list[str]
    ood: Json | None
    model: Json
    series: Json
    qc: Json
    timings: dict[str, float]
    attempt: int
    not_for_clinical_use: bool
    client_ref: str | None
    metadata: Json


class BlobLink(TypedDict):
    url: str
    content_type: str
    expires_at: str


class Explanation(TypedDict):
    job_id: str
    method: str
    params: dict[str, int | float | str | list[int] | None]
    stats: Json
    geometry: Json
    model: Json
    files: dict[str, BlobLink]
    created_at: str


class ModelCard(TypedDict):
    name: str
    version: str
    default: bool
    arch: str
    input_size: list[int]
    preprocess: Json
    operating_points: dict[str, Json]
    default_operating_point: str
    calibration: Json
    metrics: Json
    training_data: str
    intended_use: str
    clinical_use: bool
    sha256: str | None
    license: str | None
    notes: str | None
    ood: Json | None
    unavailable_reason: str | None
    available: bool
    shadow_of: NotRequired[str | None]


class ModelsOut(TypedDict):
    default: str
    models: list[ModelCard]


class ViewerToken(TypedDict):
    token: str
    token_type: Literal["Bearer"]
    job_id: str
    jobs: list[str]
    expires_in: int
    expires_at: str
    viewer_url: str


class Performance(TypedDict):
    """``GET /v1/models/{name}/performance``; the figure blocks are described in the OpenAPI."""

    model: str
    version: str
    since: str
    until: str
    client: str | None
    jobs: int
    studies: int
    succeeded: int
    failed: int
    with_feedback: int
    ground_truth_rule: str
    indeterminate: Json
    ood_flagged: Json
    refusals: list[Json]
    bootstrap: int
    live: Json
    card: Json
    shadows: list[Json]
