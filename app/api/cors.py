"""CORS: pages of other origins (the React worklist) calling the API and reading presigned files.

:func:`add_cors` puts Starlette's ``CORSMiddleware`` outside the edge guard (preflight
``OPTIONS`` requests carry no credentials and are answered before authentication; error
answers of the edge, 401 or 429, carry the CORS headers too, so that the page can read them)
and inside the request-context middleware (request ids and metrics cover preflights).
:func:`set_bucket_cors` lets the origins GET the bucket's objects (presigned URLs).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.config import Settings
from app.storage import Storage, translate_errors

__all__ = ["add_cors", "set_bucket_cors"]

#: request headers a page may send (besides the CORS-safelisted ones)
_ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Client-Ref", "X-Client-Metadata")
#: answer headers a page may read
_EXPOSE_HEADERS = ("Location", "Retry-After")


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Add the CORS middleware when ``cors_origins`` is set (call between the edge guard and the
    request context: middleware added later runs first)."""
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=[*_ALLOW_HEADERS, settings.request_id_header],
        expose_headers=[*_EXPOSE_HEADERS, settings.request_id_header],
        allow_credentials=False,  # bearer keys and viewer tokens, never cookies
        max_age=600,
    )


def set_bucket_cors(storage: Storage, origins: list[str]) -> None:
    """Let ``origins`` GET (and HEAD) the bucket's objects; raises :class:`StorageError` when the
    object store refuses (MinIO does not implement bucket CORS: docs/security.md, CORS)."""
    rules = {
        "CORSRules": [
            {
                "AllowedOrigins": origins,
                "AllowedMethods": ["GET", "HEAD"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["Content-Length", "Content-Type", "ETag"],
                "MaxAgeSeconds": 600,
            }
        ]
    }
    with translate_errors("put_bucket_cors"):
        storage.client.put_bucket_cors(Bucket=storage.bucket, CORSConfiguration=rules)
