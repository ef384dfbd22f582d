"""Response models of the worklist routes: list pages and the series picker (docs/api.md)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from app.schemas import _UUID_EX, JobError, JobStatus, StudyOut, _example
from app.schemas_detail import QCReasonOut

__all__ = ["JobPage", "SeriesPick", "StudyPage", "StudySeries"]


class SeriesPick(BaseModel):
    """One series of a study as the QC sees it from its headers (no pixels are read)."""

    series_uid: str
    rank: int | None = Field(description="1 = what a prediction selects by default; null when unusable")
    usable: bool
    selected: bool = Field(description="the series a prediction without `series_uid` uses")
    score: float = Field(description="the ranking score (higher is preferred)")
    reasons: list[QCReasonOut] = Field(description="QC findings: `reject` codes make it unusable")
    ranking_notes: list[str] = Field(description="why it ranks where it does (human text)")
    modality: str
    description: str = Field(description="SeriesDescription (withheld when it carries an identifier)")
    kernel: str = Field(description="ConvolutionKernel")
    body_part: str
    image_type: list[str]
    slices: int
    rows: int
    columns: int
    pixel_spacing_mm: list[float] = Field(description="[row, column] spacing, mm")
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None = Field(description="median distance between slices, mm")
    coverage_mm: float = Field(description="extent along the slice normal, mm")
    orientation: str
    multiframe: bool


class StudySeries(BaseModel):
    """``GET /v1/studies/{id}/series``: pass a usable ``series_uid`` to ``POST /v1/jobs`` to override."""

    model_config = _example(
        study_id=_UUID_EX,
        selected_uid="1.2.826.0.1.3680043.8.498.3",
        error=None,
        series=[
            {
                "series_uid": "1.2.826.0.1.3680043.8.498.3",
                "rank": 1,
                "usable": True,
                "selected": True,
                "score": 9.5,
                "reasons": [],
                "ranking_notes": ["chest CT", "thin slices (1.0 mm)"],
                "modality": "CT",
                "description": "CHEST 1.0 B",
                "kernel": "B30f",
                "body_part": "CHEST",
                "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"],
                "slices": 300,
                "rows": 512,
                "columns": 512,
                "pixel_spacing_mm": [0.7, 0.7],
                "slice_thickness_mm": 1.0,
                "slice_spacing_mm": 1.0,
                "coverage_mm": 299.0,
                "orientation": "axial",
                "multiframe": False,
            }
        ],
    )
    study_id: uuid.UUID
    selected_uid: str | None = Field(description="what a prediction selects by default; null: none usable")
    error: JobError | None = Field(
        description="why no series is usable (the code a prediction would fail with)"
    )
    series: list[SeriesPick]


# --- the worklist: listing pages (keyset pagination)

_CURSOR_DOC = "opaque: pass it as `cursor` for the next page; null on the last page"


class JobPage(BaseModel):
    """``GET /v1/jobs``: the caller's jobs, newest first."""

    items: list[JobStatus]
    next_cursor: str | None = Field(description=_CURSOR_DOC)


class StudyPage(BaseModel):
    """``GET /v1/studies``: the caller's studies, newest first."""

    items: list[StudyOut]
    next_cursor: str | None = Field(description=_CURSOR_DOC)
