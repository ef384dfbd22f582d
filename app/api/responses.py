"""OpenAPI error responses: which stable codes a route may answer, grouped by HTTP status."""

from __future__ import annotations

from typing import Any

from app.errors import ALL_ERROR_CODES, SERVICE_ERROR_CODES
from app.schemas import ErrorBody

__all__ = ["error_responses", "status_of"]


def status_of(code: str) -> int:
    return SERVICE_ERROR_CODES[code][0] if code in SERVICE_ERROR_CODES else 422


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: per status, the ErrorBody schema and the codes with their meaning."""
    by_status: dict[int, list[str]] = {}
    # every authenticated route counts against the client's request rate
    limited = ("rate_limited",) if "unauthorized" in codes else ()
    for code in (*codes, *limited, "validation_error", "service_unavailable"):
        by_status.setdefault(status_of(code), []).append(code)
    out: dict[int | str, dict[str, Any]] = {}
    for status, cs in sorted(by_status.items()):
        lines = "; ".join(f"`{c}`: {ALL_ERROR_CODES[c]}" for c in dict.fromkeys(cs))
        out[status] = {
            "model": ErrorBody,
            "description": lines,
            "content": {
                "application/json": {
                    "example": {"error": cs[0], "detail": ALL_ERROR_CODES[cs[0]], "request_id": "…"}
                }
            },
        }
    return out
