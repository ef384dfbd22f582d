"""``GET /v1/models/{name}/performance``: a model's live figures against readers' feedback,
side by side with the test figures of its model card.

:class:`ModelFigures` is one model's figures on one set of (probability, ground truth) pairs;
a report may carry it for several models (a shadow model's next to the primary's).
Undefined figures (a class without any study, no feedback yet) are null.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

__all__ = [
    "CalibrationFigures",
    "CardFigures",
    "CardOperatingPoint",
    "Estimate",
    "ModelFigures",
    "OperatingPointFigures",
    "Performance",
    "Rate",
    "RefusalRate",
    "ReliabilityBin",
    "ShadowFigures",
]


class Estimate(BaseModel):
    """A figure and its percentile-bootstrap 95 % confidence interval (null when undefined)."""

    value: float | None
    ci95: tuple[float, float] | None = Field(description="[low, high]; null when undefined")


class OperatingPointFigures(BaseModel):
    threshold: float = Field(description="called pathology when the probability is >= threshold")
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate


class ReliabilityBin(BaseModel):
    lower: float
    upper: float
    count: int
    mean_probability: float | None = Field(description="null for an empty bin")
    fraction_pathology: float | None = Field(description="null for an empty bin")


class CalibrationFigures(BaseModel):
    ece: float | None = Field(description="expected calibration error over the bins")
    brier: float | None
    bins: list[ReliabilityBin]


class ModelFigures(BaseModel):
    """One model's figures on studies with a ground truth (ml.evaluate's recipe)."""

    n: int = Field(description="studies with a ground truth")
    n_pathology: int
    prevalence: float | None
    auc: Estimate
    operating_points: dict[str, OperatingPointFigures]
    calibration: CalibrationFigures


class CardOperatingPoint(BaseModel):
    threshold: float
    sensitivity: Estimate
    specificity: Estimate


class CardFigures(BaseModel):
    """The model card's test figures, as GET /v1/models serves them."""

    evaluated_on: str | None = Field(description="the card's test set (null when the card does not say)")
    n: int | None
    auc: Estimate
    operating_points: dict[str, CardOperatingPoint]


class Rate(BaseModel):
    count: int
    of: int
    rate: float | None = Field(description="count / of; null when of is 0")


class RefusalRate(Rate):
    code: str = Field(description="the job's error code (QC refusals: the input error codes)")


class ShadowFigures(BaseModel):
    """A shadow model beside its primary on the same jobs (docs/operations.md, Shadow models)."""

    model: str
    version: str
    paired: int = Field(description="succeeded jobs of the window that the shadow also answered")
    agreement: Rate = Field(description="paired jobs where the shadow's label equals the primary's")
    with_feedback: int = Field(description="paired jobs with a ground truth")
    live: ModelFigures = Field(description="the shadow's figures against the ground truth of the paired jobs")
    primary_live: ModelFigures = Field(
        description="the primary's figures on the same jobs, so that the two compare like for like"
    )


class Performance(BaseModel):
    """A model's live performance in a time window (jobs by their creation time)."""

    model: str
    version: str = Field(description="the manifest's version now (jobs of the window may predate it)")
    since: dt.datetime
    until: dt.datetime
    client: str | None = Field(description="the jobs of this client only; null: every client")
    jobs: int = Field(description="prediction jobs created in the window (any state)")
    studies: int = Field(description="distinct studies (by content hash) of those jobs")
    succeeded: int
    failed: int
    with_feedback: int = Field(description="succeeded jobs with at least one reader's current answer")
    ground_truth_rule: str
    indeterminate: Rate = Field(description="succeeded jobs labelled indeterminate")
    ood_flagged: Rate = Field(description="succeeded jobs the OOD check flagged (of those it checked)")
    refusals: list[RefusalRate] = Field(description="failed jobs by error code, of the finished jobs")
    bootstrap: int = Field(description="bootstrap resamples of every CI (stratified, seed 0)")
    live: ModelFigures = Field(description="the model's figures against the readers' ground truth")
    card: CardFigures
    shadows: list[ShadowFigures] = Field(
        default_factory=list, description="each shadow model of this one, on the jobs it also answered"
    )
