"""The reference saliency viewer: a static page ``GET /viewer/{job_id}``, and its viewer tokens.

Plain HTML, JavaScript and canvas under ``app/static/viewer/`` (no build step, no
CDN). The page itself holds no data and needs no credential. It is given a viewer
token (``POST /v1/jobs/{id}/viewer-token``: read-only, that job only, minutes) in
memory — by ``postMessage`` from the window that opened or embeds it, or typed into
its form — never in a URL, and calls ``/v1/jobs/{id}``, ``/result`` and
``/explanation`` with ``Authorization: Bearer``, then draws the CT and heatmap
layers (``ml.explain.files.write_saliency``) from their presigned URLs. The page is
not part of the OpenAPI schema (the token route is); see ``viewer.js`` for the contract.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import Caller, ServicesDep
from app.api.responses import error_responses
from app.errors import ServiceError
from app.repository import get_job
from app.schemas import ViewerToken

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "viewer"
ASSETS = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8"}

# images come from the object store (another origin, presigned); data goes to this API only
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)
token_router = APIRouter(prefix="/v1", tags=["jobs"])


@token_router.post(
    "/jobs/{job_id}/viewer-token",
    status_code=201,
    response_model=ViewerToken,
    summary="A short-lived read-only token for the viewer of one job",
    responses=error_responses("unauthorized", "forbidden", "job_not_found", "service_unavailable"),
)
async def issue_viewer_token(job_id: uuid.UUID, services: ServicesDep, caller: Caller) -> Any:
    """A token that reads this job's status, result and explanation (and its parent's, for an
    explain job) and nothing else, for ``viewer_token_ttl_s`` (at most 15 min). Give it to the
    viewer in memory, never in a URL; it stops with the API key that issued it.
    """
    if caller.viewer:
        raise ServiceError("forbidden", "a viewer token cannot issue tokens")

    def find() -> list[str] | None:
        with services.db.conn() as conn:
            job = get_job(conn, job_id, caller.client)
        if job is None:
            return None
        return [str(job_id)] + ([str(job.parent_job_id)] if job.parent_job_id else [])

    jobs = await run_in_threadpool(find)
    if jobs is None:
        raise ServiceError("job_not_found")
    try:
        token = await run_in_threadpool(services.viewer_tokens.issue, caller, jobs)
    except redis.RedisError:
        raise ServiceError("service_unavailable", "viewer tokens are unavailable (Redis); retry") from None
    ttl = services.viewer_tokens.ttl_s
    body = ViewerToken(
        token=token,
        job_id=job_id,
        jobs=[uuid.UUID(j) for j in jobs],
        expires_in=ttl,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl),
        viewer_url=f"/viewer/{job_id}",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/viewer/{job_id}")
def viewer_page(job_id: uuid.UUID) -> FileResponse:
    """The viewer page for ``job_id`` (the page reads the id from its own path)."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**_HEADERS, "Cache-Control": "no-store"},
    )


@router.get("/viewer/assets/{name}")
def viewer_asset(name: str) -> FileResponse:
    """The page's script and style sheet (a fixed list: nothing else under the folder is served)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ServiceError("not_found", "no such viewer asset")
    return FileResponse(
        STATIC_DIR / name, media_type=media_type, headers={**_HEADERS, "Cache-Control": "no-cache"}
    )
