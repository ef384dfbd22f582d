"""Studies: upload (streamed to S3), read, delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import Client, Services, ServicesDep
from app.api.idempotency import run_idempotent
from app.api.responses import error_responses
from app.db import Conn
from app.errors import ServiceError
from app.logs import logger
from app.repository import delete_study, get_study, insert_study
from app.schemas import StudyOut
from app.uploads import receive_zip

router = APIRouter(prefix="/v1", tags=["studies"])

IdemKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="retries with the same key and body replay the answer"),
]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The DICOM study as a ZIP archive: the raw body, or one file part of a form.",
        "content": {
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


def study_out(row: dict[str, Any], existing: bool) -> dict[str, Any]:
    return StudyOut(
        study_id=row["id"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        files=row["members"],
        uncompressed_bytes=row["uncompressed_bytes"],
        created_at=row["created_at"],
        existing=existing,
    ).model_dump(mode="json")


@router.post(
    "/studies",
    status_code=201,
    response_model=StudyOut,
    summary="Upload a DICOM study (ZIP), streamed to the object store",
    responses={
        200: {"model": StudyOut, "description": "the same bytes were uploaded before: the existing study"},
        **error_responses(
            "unauthorized",
            "payload_too_large",
            "unsupported_media_type",
            "zip_invalid",
            "zip_too_large",
            "zip_unsafe_path",
            "zip_bomb",
            "idempotency_conflict",
            "upload_failed",
            "server_busy",
        ),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def upload_study(
    request: Request, services: ServicesDep, client: Client, idempotency_key: IdemKey = None
) -> JSONResponse:
    """Stream the ZIP to S3 (never held whole in memory or on disk), computing sha256 and size.

    The archive's central directory is checked (member count, sizes, ratio,
    paths, encryption) before the study is accepted. Uploading the same bytes
    again returns the existing study (200, ``existing: true``).
    """
    status, body = await store_study(request, services, client, idempotency_key, route="POST /v1/studies")
    return JSONResponse(body, status_code=status)


async def store_study(
    request: Request,
    services: Services,
    client: str,
    idempotency_key: str | None,
    *,
    route: str,
    chunks: Callable[[Request], AsyncIterator[bytes]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Stream the study to S3, check it and record it: (201 or 200, the ``StudyOut`` body).

    ``chunks``: the ZIP made from the body another way (:func:`app.uploads.receive_zip`).
    """
    s = services.settings
    study_id = uuid.uuid4()
    key = f"studies/{study_id}/source.zip"
    up = await receive_zip(
        request,
        services.storage,
        key,
        max_bytes=s.max_upload_bytes,
        part_bytes=s.upload_part_bytes,
        parts_in_flight=s.upload_parts_in_flight,
        gate=services.uploads,
        chunks=chunks,
    )

    def record(conn: Conn) -> tuple[int, dict[str, Any]]:
        row, created = insert_study(
            conn,
            study_id=study_id,
            client=client,
            sha256=up.sha256,
            size_bytes=up.size,
            s3_key=key,
            members=up.summary.files,
            uncompressed_bytes=up.summary.uncompressed_bytes,
        )
        return (201 if created else 200), study_out(row, existing=not created)

    try:
        status, body, _ = await run_in_threadpool(
            run_idempotent, services.db, client, idempotency_key, route, up.sha256, record
        )
    except BaseException:
        await run_in_threadpool(services.storage.delete, key)
        raise
    if str(body.get("study_id")) != str(study_id):  # existing study or replay: our copy is not referenced
        await run_in_threadpool(services.storage.delete, key)
    else:
        logger.info("study {} stored: {} bytes, {} files", study_id, up.size, up.summary.files)
    return status, body


@router.get(
    "/studies/{study_id}",
    response_model=StudyOut,
    summary="A study's metadata",
    responses=error_responses("unauthorized", "study_not_found"),
)
def read_study(study_id: uuid.UUID, services: ServicesDep, client: Client) -> dict[str, Any]:
    with services.db.conn() as conn:
        row = get_study(conn, client, study_id)
    if row is None:
        raise ServiceError("study_not_found")
    return study_out(row, existing=True)


@router.delete(
    "/studies/{study_id}",
    status_code=204,
    summary="Delete a study's ZIP and row (jobs keep their results)",
    responses=error_responses("unauthorized", "study_not_found"),
)
def remove_study(study_id: uuid.UUID, services: ServicesDep, client: Client) -> Response:
    with services.db.tx() as conn:
        row = delete_study(conn, client, study_id)
    if row is None:
        raise ServiceError("study_not_found")
    services.storage.delete_prefix(f"studies/{study_id}/")
    logger.info("study {} deleted", study_id)
    return Response(status_code=204)
