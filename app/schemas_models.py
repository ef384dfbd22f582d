"""Typed blocks of the model cards (``GET /v1/models``) and of the DICOM result list.

The blocks come from the weights manifest (``ml/model/manifest.py``): the preprocessing, the
operating points, the calibration, the OOD statistics and the evaluation metrics. ``metrics``
is the evaluation's record; its known keys are typed, and a key a newer evaluation adds is
passed through (``extra="allow"``). Keys the manifest does not hold are left out of the
answer (the route answers with ``exclude_unset``), so the JSON is the manifest's.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Calibration",
    "DicomPushOut",
    "EvaluationMetrics",
    "ModelMetrics",
    "ModelOOD",
    "ModelOperatingPoint",
    "ModelPreprocess",
    "SplitCounts",
]

_OPEN = ConfigDict(extra="allow")


class ModelPreprocess(BaseModel):
    """The preprocessing the model was trained with (``ml/preprocess/config.py``; mm, HU, voxels)."""

    model_config = _OPEN
    target_size: list[int] = Field(description="model input (D, H, W) in voxels")
    spacing_mm: list[float] = Field(description="resampled voxel spacing (z, y, x) in mm")
    hu_window: list[float] = Field(description="HU range clipped and scaled to [-1, 1]")
    body_threshold_hu: float | None = None
    crop_margin_voxels: int | None = None
    outside_value_hu: float | None = None
    interpolation: str | None = None
    resize_mode: str | None = None


class ModelOperatingPoint(BaseModel):
    """A named threshold with its sensitivity and specificity (0–1) on the evaluation set."""

    threshold: float = Field(description="probability at or above which the study is `pathology`")
    sensitivity: float
    specificity: float
    sensitivity_ci95: list[float] | None = None
    specificity_ci95: list[float] | None = None


class Calibration(BaseModel):
    """How logits become probabilities: `none` (softmax) or `temperature` (softmax of logits / T)."""

    model_config = _OPEN
    method: str
    temperature: float | None = None
    fitted_on: str | None = None


class ModelOOD(BaseModel):
    """The out-of-distribution statistics published with the weights."""

    model_config = _OPEN
    method: str = Field(description="mahalanobis, energy or msp")
    threshold: float
    fitted_on: str
    n: int
    in_distribution_rate: float


class EvaluationMetrics(BaseModel):
    """Metrics of one evaluation split (rates 0–1, 95 % confidence intervals as [low, high])."""

    model_config = _OPEN
    n: int | None = None
    n_positive: int | None = None
    prevalence: float | None = None
    auc: float | None = None
    auc_ci95: list[float] | None = None
    threshold: float | None = None
    sensitivity: float | None = None
    sensitivity_ci95: list[float] | None = None
    specificity: float | None = None
    specificity_ci95: list[float] | None = None
    f1: float | None = None
    f1_ci95: list[float] | None = None


class SplitCounts(BaseModel):
    """Studies of a data split."""

    model_config = _OPEN
    n: int
    positives: int | None = None
    negatives: int | None = None


class ModelMetrics(EvaluationMetrics):
    """The evaluation record of the weights: overall metrics, or one block per split, and provenance."""

    source: str | None = Field(None, description="where the figures come from")
    validation: EvaluationMetrics | None = None
    tuning: EvaluationMetrics | None = None
    test: EvaluationMetrics | None = None
    operating_points_selected_on: str | None = None
    operating_points_evaluated_on: str | None = None
    data: dict[str, SplitCounts | dict[str, int] | float] | None = Field(
        None, description="the studies of each split, failed studies by reason, preprocessing seconds"
    )


class DicomPushOut(BaseModel):
    """A STOW-RS push of the job's DICOM results to the client's DICOMweb destination."""

    id: int
    url: str
    attempts: int
    delivered_at: dt.datetime | None = None
    dead_at: dt.datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
