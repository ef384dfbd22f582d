"""Request and response bodies of radiologists' feedback (``/v1/jobs/{id}/feedback``).

A job's ground truth is the majority of its readers' current answers; a tie goes to the
most recent current answer (the ``feedback_consensus`` view, docs/architecture.md §3).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "READER_PATTERN",
    "FeedbackCreate",
    "FeedbackEntry",
    "FeedbackHistory",
    "GroundTruth",
    "JobFeedback",
]

GroundTruth = Literal["normal", "pathology"]
#: an opaque reader id: letters, digits and ``_ . : -``, at most 64 (no spaces, no ``@``)
READER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
COMMENT_MAX = 1000
#: free text: line breaks and tabs allowed, no other control characters
COMMENT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


class FeedbackCreate(BaseModel):
    """One reader's answer about a succeeded prediction; it replaces that reader's current answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"ground_truth": "pathology", "reader": "rad-17", "agrees": True, "comment": "RUL"}]
        },
    )
    ground_truth: GroundTruth = Field(description="what the reader found in the study")
    reader: str = Field(
        pattern=READER_PATTERN,
        description="the calling product's opaque id of the reader (1–64 of `A-Z a-z 0-9 _ . : -`); "
        "never a name or an e-mail address",
    )
    agrees: bool | None = Field(None, description="whether the reader agrees with the service's label")
    comment: str | None = Field(
        None,
        max_length=COMMENT_MAX,
        pattern=COMMENT_PATTERN,
        description=f"free text, at most {COMMENT_MAX} characters; must not contain patient identifiers",
    )


class FeedbackEntry(BaseModel):
    reader: str
    ground_truth: GroundTruth
    agrees: bool | None
    comment: str | None
    current: bool = Field(description="false: replaced by a later answer of the same reader")
    created_at: dt.datetime


class JobFeedback(BaseModel):
    """A job's current feedback: one answer per reader and the ground truth they give."""

    ground_truth: GroundTruth = Field(
        description="the majority of the current answers; a tie goes to the most recent one"
    )
    readers: list[FeedbackEntry] = Field(description="the current answer of each reader, oldest first")


class FeedbackHistory(BaseModel):
    """``GET /v1/jobs/{id}/feedback``: the current feedback and every answer ever given."""

    job_id: uuid.UUID
    feedback: JobFeedback | None = Field(description="null: no reader answered yet")
    history: list[FeedbackEntry] = Field(description="every answer, oldest first (replaced ones too)")
