"""Pure parts of the service: settings, error table, webhook signatures and backoff."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.config import load_settings
from app.errors import ALL_ERROR_CODES, SERVICE_ERROR_CODES, ServiceError
from app.webhooks import backoff_s, sign, verify
from ml.errors import ERROR_CODES


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("max_batch: 8\nport: 9000\ns3_bucket: from-yaml\n")
    monkeypatch.setenv("S4CT_PORT", "9100")
    s = load_settings(cfg, s3_bucket="from-override")
    assert (s.max_batch, s.port, s.s3_bucket) == (8, 9100, "from-override")
    assert s.embedded and s.work_path == Path("var/work")
    with pytest.raises(ValueError, match="S4CT_DATABASE_URL"):
        s.require_services()
    cfg.write_text("no_such_setting: 1\n")
    with pytest.raises(ValueError):
        load_settings(cfg)
    monkeypatch.setenv("S4CT_MAX_BATCH", "0")
    with pytest.raises(ValueError):
        load_settings(None)


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S4CT_S3_SECRET_KEY", "very-secret-value")
    s = load_settings(None)
    assert "very-secret-value" not in repr(s) and "very-secret-value" not in str(s.model_dump())


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


def test_webhook_signature_roundtrip_and_tamper() -> None:
    body = b'{"job_id":"x","state":"succeeded"}'
    header = sign("s3cret", body, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert verify("s3cret", body, header, now=1_700_000_100)
    assert not verify("other", body, header, now=1_700_000_100)
    assert not verify("s3cret", body + b" ", header, now=1_700_000_100)
    assert not verify("s3cret", body, header, now=1_700_001_000)  # too old: replay refused
    assert not verify("s3cret", body, "garbage", now=1_700_000_100)


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    rng = random.Random(0)
    delays = [backoff_s(n, 2.0, 60.0, rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        nominal = min(60.0, 2.0 * 2 ** (n - 1))
        assert 0.8 * nominal <= d <= 1.2 * nominal


def test_large_buffers_are_mmapped_on_glibc() -> None:
    """The API fixes glibc's mmap threshold (freed 8 MiB upload parts go back to the OS)."""
    import platform

    from app.uploads import mmap_large_buffers

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert mmap_large_buffers() is True
    assert mmap_large_buffers(1 << 20) is True
