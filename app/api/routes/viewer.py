"""The reference saliency viewer: a static page, ``GET /viewer/{job_id}#key=<api key>``.

Plain HTML, JavaScript and canvas under ``app/static/viewer/`` (no build step, no
CDN). The page itself holds no data and needs no key: it reads the API key from
the URL fragment (never sent to a server) and calls ``/v1/jobs/{id}``,
``/result`` and ``/explanation`` with ``Authorization: Bearer``, then draws the
CT and heatmap layers (``ml.explain.files.write_saliency``) from their presigned URLs.
Not part of the OpenAPI schema; see ``viewer.js`` for the contract it shows.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import ServiceError

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
