"""Studies: upload (streamed to S3), list, read, the series picker, delete."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.audit import AuditDep
from app.api.deps import Client, Services, ServicesDep
from app.api.idempotency import IdemKey, run_idempotent
from app.api.paging import ClientRefQ, CreatedAfter, CreatedBefore, Cursor, Limit, utc
from app.api.responses import error_responses
from app.db import Conn
from app.errors import ServiceError
from app.logs import logger
from app.repository import (
    StudyFilter,
    get_study,
    insert_study,
    list_studies,
    store_study_series,
    study_series,
)
from app.repository.retention import remove_study
from app.retention import sweep_after_s, sweep_now
from app.schemas import ClientRef, Metadata, StudyOut
from app.schemas_worklist import StudyPage, StudySeries
from app.series_scan import scan_series
from app.uploads import receive_zip

router = APIRouter(prefix="/v1", tags=["studies"])

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


ClientRefHeader = Annotated[
    str | None,
    Header(
        alias="X-Client-Ref",
        max_length=128,
        description="your own reference of the study (≤ 128 characters), echoed in its answers and lists",
    ),
]
MetadataHeader = Annotated[
    str | None,
    Header(
        alias="X-Client-Metadata",
        max_length=8192,
        description="your own JSON object (≤ 4 KiB compact, ASCII: escape other characters as \\uXXXX), "
        "echoed in the study's answers and lists",
        examples=['{"worklist_row": 4711}'],
    ),
]
_REF = TypeAdapter(ClientRef)
_METADATA = TypeAdapter(Metadata)


def _client_fields(ref: str | None, metadata: str | None) -> tuple[str | None, dict[str, Any]]:
    """The upload's client_ref and metadata from their headers (422 ``validation_error`` when invalid)."""
    try:
        checked_ref = None if ref is None else _REF.validate_python(ref)
    except ValidationError as e:
        raise ServiceError("validation_error", f"X-Client-Ref: {e.errors()[0]['msg']}") from None
    if metadata is None:
        return checked_ref, {}
    try:
        return checked_ref, _METADATA.validate_python(orjson.loads(metadata))
    except orjson.JSONDecodeError:
        raise ServiceError("validation_error", "X-Client-Metadata: not valid JSON") from None
    except ValidationError as e:
        raise ServiceError("validation_error", f"X-Client-Metadata: {e.errors()[0]['msg']}") from None


def study_out(row: dict[str, Any], existing: bool) -> dict[str, Any]:
    return StudyOut(
        study_id=row["id"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        files=row["members"],
        uncompressed_bytes=row["uncompressed_bytes"],
        created_at=row["created_at"],
        existing=existing,
        client_ref=row.get("client_ref"),
        metadata=row.get("metadata") or {},
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
    request: Request,
    services: ServicesDep,
    client: Client,
    idempotency_key: IdemKey = None,
    client_ref: ClientRefHeader = None,
    metadata: MetadataHeader = None,
) -> JSONResponse:
    """Stream the ZIP to S3 (never held whole in memory or on disk), computing sha256 and size.

    The archive's central directory is checked (member count, sizes, ratio,
    paths, encryption) before the study is accepted. Uploading the same bytes
    again returns the existing study (200, ``existing: true``) with its own
    client_ref and metadata. The body is the ZIP alone, so ``client_ref`` and
    ``metadata`` travel in the ``X-Client-Ref`` and ``X-Client-Metadata`` headers
    (headers, not query parameters: URLs end up in proxy access logs).
    """
    ref, meta = _client_fields(client_ref, metadata)
    status, body = await store_study(
        request, services, client, idempotency_key, route="POST /v1/studies", client_ref=ref, metadata=meta
    )
    return JSONResponse(body, status_code=status)


async def store_study(
    request: Request,
    services: Services,
    client: str,
    idempotency_key: str | None,
    *,
    route: str,
    chunks: Callable[[Request], AsyncIterator[bytes]] | None = None,
    client_ref: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Stream the study to S3, check it and record it: (201 or 200, the ``StudyOut`` body).

    ``chunks``: the ZIP made from the body another way (:func:`app.uploads.receive_zip`);
    ``client_ref``, ``metadata``: the caller's own reference, stored with the study.
    """
    ref, meta = client_ref, metadata or {}
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
        client=client,
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
            client_ref=ref,
            metadata=meta,
        )
        return (201 if created else 200), study_out(row, existing=not created)

    request_hash = up.sha256
    if ref is not None or meta:  # the same key with another reference is another request
        request_hash = hashlib.sha256(orjson.dumps([up.sha256, ref, meta])).hexdigest()
    try:
        status, body, _ = await run_in_threadpool(
            run_idempotent, services.db, client, idempotency_key, route, request_hash, record
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
    "/studies",
    response_model=StudyPage,
    summary="The caller's studies, newest first, filtered and paged (keyset cursor)",
    responses=error_responses("unauthorized"),
)
def list_studies_route(
    services: ServicesDep,
    client: Client,
    client_ref: ClientRefQ = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    f = StudyFilter(
        client_ref=client_ref, created_after=utc(created_after), created_before=utc(created_before)
    )
    with services.db.conn() as conn:
        try:
            page = list_studies(conn, client, f, limit, cursor)
        except ValueError as e:
            raise ServiceError("validation_error", str(e)) from None
    return {"items": [study_out(r, existing=True) for r in page.items], "next_cursor": page.next_cursor}


@router.get(
    "/studies/{study_id}",
    response_model=StudyOut,
    summary="A study's metadata",
    responses=error_responses("unauthorized", "study_not_found"),
)
def read_study(study_id: uuid.UUID, services: ServicesDep, audit: AuditDep) -> dict[str, Any]:
    with services.db.conn() as conn:
        row = get_study(conn, audit.client, study_id)
        if row is None:
            raise ServiceError("study_not_found")
        audit.record(conn, "read", "study", study_id)
    return study_out(row, existing=True)


#: header scans running at once in this process (each extracts a study's archive to disk)
_SCANS = threading.BoundedSemaphore(2)
_SCAN_WAIT_S = 30.0


@router.get(
    "/studies/{study_id}/series",
    response_model=StudySeries,
    summary="Every series of a study: ranking, usability and QC reasons (headers only, before predicting)",
    responses=error_responses(
        "unauthorized",
        "study_not_found",
        "zip_invalid",
        "zip_bomb",
        "no_dicom",
        "dicom_invalid",
        "server_busy",
    ),
)
def read_study_series(study_id: uuid.UUID, services: ServicesDep, client: Client) -> dict[str, Any]:
    """The series picker. The first call reads the study's DICOM headers (no pixels) and keeps the
    answer; a study that cannot be read answers its input refusal code (422)."""
    with services.db.conn() as conn:
        row, body = study_series(conn, client, study_id)
    if row is None:
        raise ServiceError("study_not_found")
    if body is None:
        if not _SCANS.acquire(timeout=_SCAN_WAIT_S):
            err = ServiceError("server_busy", "other studies are being scanned; retry later")
            err.headers["Retry-After"] = "5"
            raise err
        try:
            key = str(row["s3_key"])
            body = scan_series(
                lambda path: services.storage.get_to_file(key, path), services.settings.work_dir
            )
        finally:
            _SCANS.release()
        with services.db.conn() as conn:
            store_study_series(conn, study_id, body)
        logger.info("study {} scanned: {} series", study_id, len(body.get("series", ())))
    if "series" not in body:
        raise ServiceError(body["error"]["code"], body["error"]["detail"])
    return {"study_id": str(study_id), **body}


@router.delete(
    "/studies/{study_id}",
    status_code=204,
    summary="Delete a study: its ZIP, row and the CT images of its jobs (results stay); sends study.deleted",
    responses=error_responses("unauthorized", "study_not_found"),
)
def remove_study_route(study_id: uuid.UUID, services: ServicesDep, audit: AuditDep) -> Response:
    """Deletes the ZIP and every image of its jobs' explanations that shows CT pixels (the
    overlays ``sprite_png``, ``peak_png`` and the viewer's ``ct_layer``: they leave the
    explanations' ``files``). The jobs keep their results and the saliency files, which hold
    no CT pixels. A job still running on the study loses the CT images it stores later too."""
    with services.db.tx() as conn:
        prefixes = remove_study(conn, audit.client, study_id, sweep_after_s(services.settings))
        if prefixes is not None:
            audit.record(conn, "delete", "study", study_id)
    if prefixes is None:
        raise ServiceError("study_not_found")
    sweep_now(services.storage, prefixes)
    logger.info("study {} deleted", study_id)
    return Response(status_code=204)
