"""Service errors and their JSON bodies.

Every error answer is ``{"error": "<stable_code>", "detail": "<text>", "request_id": "..."}``
(docs/architecture.md §3.2). Input refusals from ``ml/`` keep their codes (:data:`ml.errors.ERROR_CODES`);
the service adds its own below. Both tables feed the OpenAPI description.
"""

from __future__ import annotations

from typing import Final

from ml.errors import ERROR_CODES as INPUT_ERROR_CODES
from ml.errors import InputError, ModelUnavailable

__all__ = ["ALL_ERROR_CODES", "SERVICE_ERROR_CODES", "ServiceError", "from_input_error", "from_model_error"]

SERVICE_ERROR_CODES: Final[dict[str, tuple[int, str]]] = {
    "unauthorized": (401, "Missing, unknown or revoked API key."),
    "forbidden": (403, "The API key may not do this."),
    "study_not_found": (404, "No study with this id belongs to the caller."),
    "job_not_found": (404, "No job with this id belongs to the caller."),
    "explanation_not_found": (404, "The job has no explanation (yet) for this method."),
    "not_found": (404, "No such route."),
    "method_not_allowed": (405, "The route does not accept this HTTP method."),
    "idempotency_conflict": (409, "The Idempotency-Key was used before with another request body."),
    "idempotency_in_progress": (409, "A request with this Idempotency-Key is still being processed; retry."),
    "job_not_finished": (409, "The job has no result yet (it is queued or running); poll its status."),
    "job_failed": (409, "The job failed; its status carries the error code."),
    "rate_limited": (429, "Too many requests from this client; retry after the Retry-After seconds."),
    "quota_exceeded": (429, "The client has its maximum of queued jobs; retry after Retry-After seconds."),
    "payload_too_large": (413, "The upload exceeds the size limit."),
    "unsupported_media_type": (415, "Send the ZIP as application/zip or multipart/form-data."),
    "validation_error": (422, "The request body or parameters are invalid."),
    "model_unavailable": (503, "The requested model is unknown or its weights cannot be loaded."),
    "server_busy": (503, "Too many uploads in progress; retry after the Retry-After seconds."),
    "overloaded": (503, "More connections or requests in progress than the server takes; retry later."),
    "service_unavailable": (503, "A backing service (database, queue, object store) is unreachable."),
    "upload_failed": (502, "The object store refused the upload; retry."),
    "internal_error": (500, "Unexpected server error (reported with the request id)."),
    "callback_url_invalid": (
        422,
        "The callback_url is not an http(s) URL with a valid host, or its address is not allowed.",
    ),
    "explain_too_costly": (
        422,
        "The explanation's model passes or estimated memory exceed the service's budget.",
    ),
    # HTTP edge (app/api/edge.py)
    "request_timeout": (408, "The request's headers or body arrived too slowly; the connection is closed."),
    "headers_too_large": (431, "Too many or too large request header fields."),
    # DICOM results and DICOMweb (docs/interop.md)
    "dicom_not_found": (
        404,
        "The job has no DICOM results (an explain job, or DICOM results were disabled).",
    ),
    "dicom_source_uids_invalid": (
        422,
        "The source study's UIDs are not valid DICOM UIDs: no DICOM result can reference it.",
    ),
    "dicom_source_invalid": (422, "The source headers cannot be copied into a valid DICOM object."),
    "dicomweb_endpoint_not_configured": (
        422,
        "The DICOMweb URL is not one of the client's configured source endpoints (`service4ct dicomweb`).",
    ),
    "dicomweb_fetch_failed": (
        502,
        "The PACS did not deliver the study by WADO-RS (unreachable, error status, or not found).",
    ),
    # job error codes (in GET /v1/jobs/{id}, never an HTTP answer)
    "worker_crashed": (500, "The job exceeded its attempts: workers died or timed out while running it."),
    "storage_unavailable": (
        503,
        "The object store stayed unreachable for the worker's retry budget; resubmit.",
    ),
    "explain_params_invalid": (422, "The worker refused the explanation parameters for this model."),
    # the worklist: cancelling
    "job_finished": (409, "The job already finished (succeeded or failed): it cannot be cancelled."),
    "job_cancelled": (409, "The job was cancelled: it has no result or explanation."),
    # retention and deletion
    "job_active": (409, "The job is queued or running: cancel it before deleting it."),
    # feedback and live performance
    "feedback_not_accepted": (
        409,
        "Feedback is accepted on a succeeded prediction job only (not queued, running, failed, "
        "cancelled or explain jobs).",
    ),
    "model_not_found": (404, "No model of this name in the manifest (see GET /v1/models)."),
    # shadow models (docs/operations.md, Shadow models)
    "model_is_shadow": (
        422,
        "The model is a shadow of another model: it runs beside its primary and cannot serve a job.",
    ),
}

ALL_ERROR_CODES: Final[dict[str, str]] = {
    **{code: text for code, text in INPUT_ERROR_CODES.items()},
    **{code: text for code, (_status, text) in SERVICE_ERROR_CODES.items()},
}


class ServiceError(Exception):
    """An error answer: stable ``code``, HTTP status, human ``detail`` (never PHI)."""

    def __init__(self, code: str, detail: str | None = None, *, http_status: int | None = None) -> None:
        if code not in ALL_ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        status = http_status or SERVICE_ERROR_CODES.get(code, (422, ""))[0]
        text = detail or ALL_ERROR_CODES[code]
        super().__init__(f"{code}: {text}")
        self.code = code
        self.detail = text
        self.http_status = status
        self.headers: dict[str, str] = {}

    def body(self, request_id: str | None) -> dict[str, str | None]:
        return {"error": self.code, "detail": self.detail, "request_id": request_id}


def from_input_error(err: InputError) -> ServiceError:
    """The API answer for an input refusal (422, or the error's own status hint)."""
    return ServiceError(err.code, err.detail, http_status=err.http_status)


def from_model_error(err: ModelUnavailable) -> ServiceError:
    return ServiceError("model_unavailable", err.detail)
