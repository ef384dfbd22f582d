"""A model's live performance against readers' feedback (the caller's jobs only)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.api.deps import Client, ServicesDep
from app.api.paging import IsoTime, utc
from app.api.responses import error_responses
from app.errors import ServiceError
from app.performance import live_performance
from app.schemas_performance import Performance

router = APIRouter(prefix="/v1", tags=["models"])

#: the window when ``since`` is not given: this long before ``until``
DEFAULT_WINDOW = dt.timedelta(days=30)


@router.get(
    "/models/{name}/performance",
    response_model=Performance,
    summary="Live AUC, rates at every operating point, calibration and refusal rates, with 95 % CIs",
    responses=error_responses("unauthorized", "forbidden", "model_not_found", "validation_error"),
)
def model_performance(
    services: ServicesDep,
    caller: Client,
    name: Annotated[str, Path(max_length=128)],
    since: Annotated[
        IsoTime | None, Query(description="jobs created at or after (ISO 8601; default: until - 30 days)")
    ] = None,
    until: Annotated[
        IsoTime | None, Query(description="jobs created before (ISO 8601; default: now)")
    ] = None,
    client: Annotated[
        str | None, Query(max_length=64, description="the caller's own client name (the only one allowed)")
    ] = None,
) -> Any:
    """The caller's prediction jobs of model ``name`` created in ``[since, until)``: counts, the
    ground truth of the readers' current answers, and the model card's test figures beside.

    An API key sees its own client's jobs only: ``client`` other than the caller is refused with
    403 ``forbidden``. Operators read every client's figures with ``service4ct performance``."""
    if client is not None and client != caller:
        raise ServiceError("forbidden", "an API key reads the performance on its own client's jobs only")
    entry = services.manifest.entries.get(name)
    if entry is None:
        raise ServiceError("model_not_found", f"no model {name!r}; see GET /v1/models")
    end = utc(until) or dt.datetime.now(dt.UTC)
    try:
        start = utc(since) or end - DEFAULT_WINDOW
    except OverflowError:
        raise ServiceError("validation_error", "until is too early for the default window") from None
    if start >= end:
        raise ServiceError("validation_error", "since must be before until")
    with services.db.conn() as conn:
        shadows = services.manifest.shadows_of(name)
        return live_performance(conn, entry, start, end, caller, shadows=shadows).performance
