"""The service's error table (stable codes, HTTP statuses)."""

from __future__ import annotations

import pytest

from app.errors import ALL_ERROR_CODES, SERVICE_ERROR_CODES, ServiceError
from ml.errors import ERROR_CODES


def test_error_table() -> None:
    # the contract's codes are all known; service codes never clash with input codes
    for code in (
        "zip_invalid",
        "zip_too_large",
        "zip_unsafe_path",
        "zip_bomb",
        "no_dicom",
        "not_ct",
        "no_usable_series",
        "too_few_slices",
        "slice_thickness_too_large",
        "inconsistent_spacing",
        "unsupported_transfer_syntax",
        "study_not_found",
        "job_not_found",
        "unauthorized",
        "payload_too_large",
        "model_unavailable",
        "worker_crashed",
    ):
        assert code in ALL_ERROR_CODES, code
    assert not set(SERVICE_ERROR_CODES) & set(ERROR_CODES)
    assert all(c == c.lower() and " " not in c for c in ALL_ERROR_CODES)
    err = ServiceError("payload_too_large")
    assert err.http_status == 413 and err.body("r")["request_id"] == "r"
    with pytest.raises(ValueError):
        ServiceError("made_up_code")
