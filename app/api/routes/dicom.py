"""A job's results for hospital systems: its DICOM objects (SR, Secondary Capture) and its FHIR report."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import Client, ServicesDep
from app.api.responses import error_responses
from app.api.routes.jobs import succeeded_prediction
from app.db import Conn
from app.errors import ServiceError
from app.fhir import diagnostic_report
from app.repository import get_result
from app.repository.dicom import DicomOutputs, get_dicom_outputs, push_rows
from app.schemas import DicomList, DicomObjectOut

router = APIRouter(prefix="/v1", tags=["interoperability"])

_ERRORS = ("unauthorized", "job_not_found", "job_not_finished", "job_failed")


def _outputs(conn: Conn, job_id: uuid.UUID, client: str) -> DicomOutputs:
    succeeded_prediction(conn, job_id, client)
    out = get_dicom_outputs(conn, job_id)
    if out is None:
        raise ServiceError("dicom_not_found")
    if out.status == "refused":
        raise ServiceError(out.error_code or "dicom_source_invalid", out.error_detail)
    return out


@router.get(
    "/jobs/{job_id}/dicom",
    response_model=DicomList,
    summary="The job's DICOM results (SR, Secondary Capture) in the source study, with download URLs",
    responses=error_responses(
        *_ERRORS, "dicom_not_found", "dicom_source_uids_invalid", "dicom_source_invalid"
    ),
)
def list_dicom(job_id: uuid.UUID, services: ServicesDep, client: Client) -> Any:
    with services.db.conn() as conn:
        out = _outputs(conn, job_id, client)
        pushes = push_rows(conn, job_id)
    ttl = services.settings.presign_ttl_s
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)).isoformat().replace("+00:00", "Z")
    objects = [
        DicomObjectOut.model_validate(
            {k: v for k, v in asdict(o).items() if k != "key"}
            | {
                "download": f"/v1/jobs/{job_id}/dicom/{o.sop_instance_uid}",
                "url": services.storage.presign_get(o.key, ttl),
                "expires_at": expires,
            }
        )
        for o in out.objects
    ]
    return DicomList(job_id=job_id, objects=objects, push=pushes)


@router.get(
    "/jobs/{job_id}/dicom/{sop_instance_uid}",
    summary="One DICOM result of the job (application/dicom)",
    response_class=Response,
    responses={
        200: {"content": {"application/dicom": {}}, "description": "the DICOM file (Part 10)"},
        **error_responses(*_ERRORS, "dicom_not_found", "dicom_source_uids_invalid", "dicom_source_invalid"),
    },
)
def download_dicom(
    job_id: uuid.UUID, sop_instance_uid: str, services: ServicesDep, client: Client
) -> Response:
    with services.db.conn() as conn:
        out = _outputs(conn, job_id, client)
    found = next((o for o in out.objects if o.sop_instance_uid == sop_instance_uid), None)
    if found is None:
        raise ServiceError("dicom_not_found", "the job has no DICOM object with this SOP Instance UID")
    data = services.storage.get_bytes(found.key)
    return Response(
        data,
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{found.kind}-{job_id}.dcm"'},
    )


@router.get(
    "/jobs/{job_id}/fhir",
    summary="The job's result as a FHIR R4 DiagnosticReport (Observation and Device contained)",
    response_class=Response,
    responses={
        200: {"content": {"application/fhir+json": {}}, "description": "a FHIR R4 DiagnosticReport"},
        **error_responses(*_ERRORS),
    },
)
def read_fhir(job_id: uuid.UUID, services: ServicesDep, client: Client) -> Response:
    with services.db.conn() as conn:
        job = succeeded_prediction(conn, job_id, client)
        result = get_result(conn, job_id)
    if result is None:
        raise ServiceError("job_not_finished")
    body = diagnostic_report(result, job.finished_at)
    return Response(orjson.dumps(body), media_type="application/fhir+json")
