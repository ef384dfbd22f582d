"""Swagger UI (``/docs``) and ReDoc (``/redoc``) with their assets served by the API itself.

No CDN: the pages load ``/docs/assets/*`` (a fixed list, ``app/static/docs/README.md`` says
where each file comes from), so they work without internet access and run no third-party
script. Mounted only when ``docs_enabled`` is true (``/openapi.json`` too).
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from app.errors import ServiceError

__all__ = ["ASSETS", "router"]

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "docs"
#: served name → (file under STATIC_DIR, media type); *.gz files are stored compressed
ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js.gz", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css.gz", "text/css; charset=utf-8"),
    "redoc.standalone.js": ("redoc.standalone.js.gz", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": ("favicon-32x32.png", "image/png"),
}
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def _assets(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/docs/assets"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    base = _assets(request)
    page = get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
        title="Service4CT API",
        swagger_js_url=f"{base}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}/swagger-ui.css",
        swagger_favicon_url=f"{base}/favicon-32x32.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )
    page.headers.update(_HEADERS)
    return page


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
        title="Service4CT API",
        redoc_js_url=f"{_assets(request)}/redoc.standalone.js",
        redoc_favicon_url=f"{_assets(request)}/favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers.update(_HEADERS)
    return page


@router.get("/docs/assets/{name}")
def docs_asset(name: str, request: Request) -> Response:
    """One of :data:`ASSETS` (gzip as stored when the browser accepts it)."""
    found = ASSETS.get(name)
    if found is None:
        raise ServiceError("not_found", "no such documentation asset")
    file, media_type = found
    headers = {**_HEADERS, "Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    data = _read(file)
    if file.endswith(".gz"):
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
        else:
            data = gzip.decompress(data)
    return Response(data, media_type=media_type, headers=headers)
