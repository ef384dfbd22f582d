"""A small typed client of the Service4CT API (``clients/README.md``)."""

from service4ct_client.client import FINAL_STATES, Service4CTClient, Service4CTError
from service4ct_client.types import (
    BlobLink,
    ErrorBody,
    Explanation,
    JobAccepted,
    JobError,
    JobPage,
    JobResult,
    JobStatus,
    Links,
    ModelCard,
    ModelsOut,
    StudyOut,
    StudyPage,
    ViewerToken,
)

__all__ = [
    "FINAL_STATES",
    "BlobLink",
    "ErrorBody",
    "Explanation",
    "JobAccepted",
    "JobError",
    "JobPage",
    "JobResult",
    "JobStatus",
    "Links",
    "ModelCard",
    "ModelsOut",
    "Service4CTClient",
    "Service4CTError",
    "StudyOut",
    "StudyPage",
    "ViewerToken",
]
