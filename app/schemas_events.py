"""Models of ``GET/PUT /v1/webhook``: a client's default webhook URL and event selection (docs/api.md)."""

from __future__ import annotations

import datetime as dt

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from app.repository.events import DEFAULT_EVENTS, Event
from app.schemas import _example

__all__ = ["WebhookSettings", "WebhookSettingsIn"]

_EVENTS_DOC = (
    "events delivered (`job.started`, `job.succeeded`, `job.failed`, `job.cancelled`, "
    "`explanation.succeeded`, `study.deleted`); others are not sent. "
    f"null: the default selection ({', '.join(DEFAULT_EVENTS)})"
)
_URL = "https://laravel.example/api/service4ct/webhook"


class WebhookSettingsIn(BaseModel):
    """``PUT /v1/webhook``: replaces both fields. A job's own ``callback_url`` still wins for its events."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": _URL, "events": ["job.started", "job.succeeded"]}]},
    )
    url: AnyHttpUrl | None = Field(
        None, description="the default webhook URL (same policy as `callback_url`); null: none"
    )
    events: list[Event] | None = Field(None, description=_EVENTS_DOC)


class WebhookSettings(BaseModel):
    """The calling client's webhook settings."""

    model_config = _example(
        url=_URL,
        events=["job.started", "job.succeeded"],
        default_events=False,
        secret_rotation_until=None,
    )
    url: str | None = Field(description="the default webhook URL; null: only jobs' `callback_url` are called")
    events: list[Event] = Field(description="the events delivered")
    default_events: bool = Field(description="true while the client has not chosen (the default selection)")
    secret_rotation_until: dt.datetime | None = Field(
        description="while a secret rotation is open: until when deliveries also carry the previous "
        "secret's signatures"
    )
