"""Input errors with stable, documented codes.

Every refusal of user-supplied data raises :class:`InputError` (or a subclass)
carrying a snake_case ``code`` that the API returns verbatim and clients may
branch on. ``detail`` is human text and must never contain patient identifiers
or archive member names (file names can embed PatientID).
"""

from __future__ import annotations

from typing import Final

# code -> one-line description (the OpenAPI spec and docs are generated from this table)
ERROR_CODES: Final[dict[str, str]] = {
    "zip_invalid": "The upload is not a readable ZIP archive (truncated, corrupt, encrypted or empty).",
    "zip_too_large": "The archive exceeds a member-count or uncompressed-size limit.",
    "zip_unsafe_path": "A member has an absolute path, a '..' component, or is a symbolic link.",
    "zip_bomb": "Compression ratio or overlapping members indicate a decompression bomb.",
    "no_dicom": "The archive contains no readable DICOM image.",
    "dicom_invalid": "A DICOM file is malformed (truncated, missing pixel data, absurd header values).",
    "unsupported_transfer_syntax": "Pixel data uses a transfer syntax that cannot be decoded.",
    "not_ct": "No series of modality CT was found.",
    "no_usable_series": "No series passed quality control.",
    "series_not_found": "The requested series_uid is not in the study.",
    "too_few_slices": "The series has fewer slices than the minimum.",
    "slice_thickness_too_large": "The slice spacing/thickness exceeds the maximum.",
    "inconsistent_spacing": "Slice positions are irregular (missing slices or varying spacing).",
    "mixed_image_sizes": "Slices of one series differ in rows/columns/pixel spacing/orientation.",
    "non_axial": "The series is not axial.",
    "localizer": "The series is a localizer/scout image.",
    "duplicate_slices": "Several slices share the same position.",
    "gantry_tilt": "Slice positions are not along the slice normal (gantry tilt).",
}


class InputError(Exception):
    """A refusal of input data with a stable ``code``.

    ``http_status`` is a hint for the API layer (422 unless the error concerns
    the size of the upload).
    """

    http_status: int = 422

    def __init__(self, code: str, detail: str, *, http_status: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown input error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        if http_status is not None:
            self.http_status = http_status

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str], dict[str, object]]:
        # picklable with its code (errors cross process boundaries in the worker's pool)
        return (type(self), (self.code, self.detail), {"http_status": self.http_status})


class ZipError(InputError):
    """Refusal raised while vetting or extracting an archive."""


class DicomError(InputError):
    """Refusal raised while parsing DICOM headers or decoding pixels."""


class QCError(InputError):
    """No series of the study is usable, or the requested one is not."""


class ModelUnavailable(Exception):  # noqa: N818 (the stable code name is the contract)
    """The requested model cannot be used: unknown name, missing file, sha256 mismatch, bad checkpoint.

    ``code`` is always ``model_unavailable`` (the API answers 503); ``detail`` says why.
    """

    code = "model_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(f"model_unavailable: {detail}")
        self.detail = detail

    def __reduce__(self) -> tuple[type[ModelUnavailable], tuple[str]]:
        return (type(self), (self.detail,))

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}
