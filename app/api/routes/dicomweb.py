"""DICOMweb in: STOW-RS into a study record, and predictions of studies imported from a PACS.

``POST /v1/dicomweb/studies`` takes ``multipart/related; type="application/dicom"`` and
streams the instances, packed as a study ZIP (:class:`app.dicomweb.InstancePacker`), through
the upload path of ``POST /v1/studies``: same size cap, same archive vetting, same study
record and deduplication. ``POST /v1/studies/import`` queues a prediction whose study the
worker fetches by WADO-RS from one of the client's configured source endpoints (the API
never connects to a PACS).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.checks import checked_callback_url
from app.api.deps import Client, ServicesDep
from app.api.idempotency import IdemKey, body_hash, run_idempotent
from app.api.responses import error_responses
from app.api.routes.jobs import _create_job, checked_options, enqueue_job, job_fields
from app.api.routes.studies import store_study
from app.db import Conn
from app.dicomweb import InstancePacker, parse_related, stow_answer
from app.errors import ServiceError
from app.logs import logger
from app.quotas import check_queued_jobs
from app.repository import insert_job
from app.repository.dicom import DicomwebImport, insert_import, list_endpoints
from app.schemas import ImportRequest, JobAccepted, PredictRequest
from ml.explain import ExplainMethod

router = APIRouter(prefix="/v1", tags=["interoperability"])

_STOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "DICOM Part 10 instances of one study, one per part (STOW-RS, DICOM PS3.18).",
        "content": {
            'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}
        },
    }
}


class _Packed:
    """The STOW-RS body as ZIP chunks; remembers the instances for the answer."""

    def __init__(self) -> None:
        self.instances: list[tuple[str, str]] = []

    async def __call__(self, request: Request) -> AsyncIterator[bytes]:
        try:
            boundary = parse_related(request.headers.get("content-type", ""))
        except ValueError as e:
            raise ServiceError("unsupported_media_type", str(e)) from None
        packer = InstancePacker(boundary)
        async for chunk in request.stream():
            packer.feed(chunk)
            if data := packer.take():
                yield data
        packer.finish()
        self.instances = packer.instances
        yield packer.take()


@router.post(
    "/dicomweb/studies",
    summary="STOW-RS: store DICOM instances as a study (the same record as a ZIP upload)",
    response_class=JSONResponse,
    responses={
        200: {
            "content": {"application/dicom+json": {}},
            "description": "the stored instances (Referenced SOP Sequence); headers `Location` and "
            "`X-Service4CT-Study-Id` name the study (`X-Service4CT-Existing: true` for bytes stored before)",
        },
        **error_responses(
            "unauthorized",
            "payload_too_large",
            "unsupported_media_type",
            "dicom_invalid",
            "no_dicom",
            "zip_too_large",
            "idempotency_conflict",
            "upload_failed",
            "server_busy",
        ),
    },
    openapi_extra=_STOW_BODY,
)
async def stow_studies(
    request: Request,
    services: ServicesDep,
    client: Client,
    idempotency_key: IdemKey = None,
    predict: Annotated[
        ExplainMethod | None,
        Header(
            alias="X-Service4CT-Predict",
            description="queue a prediction of the stored study with this explanation method (`none` for "
            "none), unless these instances were stored before: what a PACS routing studies here sets in "
            "its static headers",
        ),
    ] = None,
) -> JSONResponse:
    packed = _Packed()
    status, body = await store_study(
        request, services, client, idempotency_key, route="POST /v1/dicomweb/studies", chunks=packed
    )
    study_id = body["study_id"]
    headers = {
        "Location": f"/v1/studies/{study_id}",
        "X-Service4CT-Study-Id": str(study_id),
        "X-Service4CT-Existing": "true" if status == 200 else "false",
    }
    if predict is not None and status == 201:  # a PACS resending a study does not predict it twice
        accepted = await run_in_threadpool(
            _create_job,
            services,
            client,
            uuid.UUID(str(study_id)),
            PredictRequest(explain=predict),
            None,
            "POST /v1/dicomweb/studies (predict)",
        )
        headers["X-Service4CT-Job-Id"] = orjson.loads(accepted.body)["job_id"]
    return JSONResponse(
        stow_answer(packed.instances), status_code=200, headers=headers, media_type="application/dicom+json"
    )


@router.post(
    "/studies/import",
    status_code=202,
    response_model=JobAccepted,
    summary="Predict a study fetched from a configured PACS by WADO-RS (the worker fetches it)",
    responses=error_responses(
        "unauthorized",
        "quota_exceeded",
        "dicomweb_endpoint_not_configured",
        "model_unavailable",
        "callback_url_invalid",
        "explain_too_costly",
        "idempotency_conflict",
        "idempotency_in_progress",
    ),
)
def import_study(
    req: ImportRequest, services: ServicesDep, client: Client, idempotency_key: IdemKey = None
) -> Any:
    model, params = checked_options(services, req)
    callback_url = checked_callback_url(services, req.callback_url)
    url = req.dicomweb_url.rstrip("/")

    def create(conn: Conn) -> tuple[int, dict[str, Any]]:
        if url not in {u.rstrip("/") for u in list_endpoints(conn, client, "source")}:
            raise ServiceError("dicomweb_endpoint_not_configured")
        check_queued_jobs(conn, client, services.settings)  # 429 quota_exceeded when full
        job = insert_job(
            conn,
            client=client,
            study={"id": None, "sha256": ""},  # the worker sets both once it has fetched the study
            series_uid=req.series_instance_uid or req.series_uid,
            **job_fields(services, req, model, params, callback_url),
        )
        insert_import(conn, DicomwebImport(job.id, url, req.study_instance_uid, req.series_instance_uid))
        return 202, job.accepted_view()

    payload = req.model_dump(mode="json")
    status, body, replayed = run_idempotent(
        services.db, client, idempotency_key, "POST /v1/studies/import", body_hash(payload), create
    )
    if not replayed:
        enqueue_job(services, uuid.UUID(body["job_id"]), req.priority == "urgent")
        logger.info("job {} queued: a study to import by WADO-RS", body["job_id"])
    return JSONResponse(body, status_code=status, headers={"Location": body["status_url"]})
