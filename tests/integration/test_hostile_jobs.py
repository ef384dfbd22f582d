"""Hostile studies that pass the upload check, through the live service and the real worker.

Each is uploaded through the real API (uvicorn on loopback) and run by the real worker
(model loaded, spawned preprocessing pool) on the shared embedded PostgreSQL, Redis and
S3. The job fails with its stable code on its first attempt (a refusal is final, never
an "unexpected error" retried max_attempts times and then failed as ``internal_error``),
or it succeeds where the product keeps a usable series, saying what it left out. After
the whole batch the worker still serves a normal study with the same preprocessing pool.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from conftest import LiveApi, new_key, wait_job  # type: ignore[import-not-found]
from dicomcraft import edit_dicom, insert_before_pixels, merge_zips, nested_sequences, rezip
from hostile import MiB, post_study
from zipcraft import nest, zero_bomb

from app.config import Settings
from app.worker.runner import Worker
from ml.phantom import make_study


@dataclass(frozen=True)
class Phantoms:
    """Small phantom studies the hostile ones are made from."""

    standard: Path
    jpeg2000: Path
    non_ct: Path
    tmp: Path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Phantoms:
    d = tmp_path_factory.mktemp("phantoms")
    return Phantoms(
        standard=make_study(d / "standard.zip", seed=61, label=0).zip_path,
        jpeg2000=make_study(d / "j2k.zip", seed=62, label=0, variant="jpeg2000").zip_path,
        non_ct=make_study(d / "mr.zip", seed=63, variant="non_ct").zip_path,
        tmp=d,
    )


# ----------------------------------------------------------------- accepted, then refused by the worker


def _all(change: Callable[[pydicom.Dataset], None]) -> Callable[[int, bytes], bytes]:
    return lambda _i, d: edit_dicom(d, change)


def _one(k: int, change: Callable[[pydicom.Dataset], None]) -> Callable[[int, bytes], bytes]:
    return lambda i, d: edit_dicom(d, change) if i == k else d


def _set(**values: Any) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        for name, value in values.items():
            setattr(ds, name, value)

    return change


def _drop_pixels(ds: pydicom.Dataset) -> None:
    del ds.PixelData


def _relabel_j2k(_i: int, d: bytes) -> bytes:
    # same-length swap of the JPEG 2000 UID for one no decoder knows
    assert b"1.2.840.10008.1.2.4.90" in d
    return d.replace(b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.99", 1)


def _deep_nesting(k: int) -> Callable[[int, bytes], bytes]:
    return lambda i, d: insert_before_pixels(d, nested_sequences(5000)) if i == k else d


def _coronal_every_other(i: int, d: bytes) -> bytes:
    return edit_dicom(d, _set(ImageOrientationPatient=[1, 0, 0, 0, 0, -1])) if i % 2 else d


@dataclass(frozen=True)
class JobCase:
    """A study the upload check accepts; ``expect`` is the job's error code or ``succeeded``."""

    name: str
    build: Callable[[Phantoms], bytes]
    expect: str
    check: Callable[[dict[str, Any]], None] | None = None  # on the result of a succeeded job


def _edited(source: str, mutate: Callable[[int, bytes], bytes | None]) -> Callable[[Phantoms], bytes]:
    def build(ph: Phantoms) -> bytes:
        src: Path = getattr(ph, source)
        return rezip(src, ph.tmp / f"{uuid.uuid4().hex}.zip", mutate).read_bytes()

    return build


def _mixed_series(ph: Phantoms) -> bytes:
    return merge_zips([ph.standard, ph.non_ct], ph.tmp / "mixed.zip").read_bytes()


def _skipped_one_unreadable(result: dict[str, Any]) -> None:
    assert result["qc"]["skipped_files"] == {"not_dicom": 1}, result["qc"]


def _ct_selected_mr_ranked_unusable(result: dict[str, Any]) -> None:
    ranking = result["series"]["ranking"]
    assert [r["usable"] for r in ranking] == [True, False], ranking
    assert [c["code"] for c in ranking[1]["reasons"]] == ["not_ct"], ranking[1]
    assert result["series"]["selected_uid"] == ranking[0]["series_uid"]


def _raw(build: Callable[[], bytes]) -> Callable[[Phantoms], bytes]:
    return lambda _ph: build()


JOB_CASES: list[JobCase] = [
    # archives whose central directory looks fine: only extraction sees the problem
    JobCase("nested_two_levels", lambda ph: nest(ph.standard.read_bytes(), 2), "zip_bomb"),
    JobCase("ratio_bomb_inside_nested_zip", _raw(lambda: nest(zero_bomb(256 * MiB), 1)), "zip_bomb"),
    JobCase("nested_one_level", lambda ph: nest(ph.standard.read_bytes(), 1), "succeeded"),
    # DICOM
    JobCase("truncated_file", _edited("standard", lambda i, d: d[:-3000] if i == 7 else d), "dicom_invalid"),
    JobCase("missing_pixel_data", _edited("standard", _one(4, _drop_pixels)), "dicom_invalid"),
    JobCase("unsupported_transfer_syntax", _edited("jpeg2000", _relabel_j2k), "unsupported_transfer_syntax"),
    # 5000 nested sequences: pydicom's RecursionError; the file is skipped as unreadable, so a
    # middle slice leaves a gap (refused), an end slice leaves a shorter regular series (kept)
    JobCase("nested_sequences_middle_slice", _edited("standard", _deep_nesting(20)), "inconsistent_spacing"),
    JobCase(
        "nested_sequences_end_slice",
        _edited("standard", _deep_nesting(0)),
        "succeeded",
        _skipped_one_unreadable,
    ),
    JobCase(
        "absurd_rows_columns", _edited("standard", _all(_set(Rows=60000, Columns=60000))), "dicom_invalid"
    ),
    JobCase("pixel_data_shorter_than_rows", _edited("standard", _all(_set(Rows=128))), "dicom_invalid"),
    JobCase("nan_rescale_slope", _edited("standard", _all(_set(RescaleSlope="NaN"))), "dicom_invalid"),
    JobCase(
        "huge_rescale_intercept", _edited("standard", _all(_set(RescaleIntercept="1e30"))), "dicom_invalid"
    ),
    # geometry: impossible planes, or a plausible-looking header that would ask for a 10^10-voxel grid
    JobCase(
        "non_orthonormal_orientation",
        _edited("standard", _all(_set(ImageOrientationPatient=[1, 0, 0, 0.5, 0.866, 0]))),
        "dicom_invalid",
    ),
    JobCase("zero_pixel_spacing", _edited("standard", _all(_set(PixelSpacing=[0, 0]))), "dicom_invalid"),
    JobCase("huge_pixel_spacing", _edited("standard", _all(_set(PixelSpacing=[100, 100]))), "dicom_invalid"),
    JobCase(
        "orientation_differs_within_series", _edited("standard", _coronal_every_other), "mixed_image_sizes"
    ),
    JobCase(
        "slice_positions_jumping",
        _edited(
            "standard", lambda i, d: edit_dicom(d, _set(ImagePositionPatient=[0, 0, i * 2.5 + (i % 3) * 0.6]))
        ),
        "inconsistent_spacing",
    ),
    JobCase(
        "mr_sop_class_labelled_ct",
        _edited("standard", _all(_set(SOPClassUID="1.2.840.10008.5.1.4.1.1.4"))),
        "not_ct",
    ),
    JobCase("mixed_series_ct_and_mr", _mixed_series, "succeeded", _ct_selected_mr_ranked_unusable),
]


@dataclass
class Outcome:
    upload_status: int
    upload_body: dict[str, Any]
    status: dict[str, Any] | None = None


@pytest.fixture(scope="module")
def client(api: LiveApi, settings: Settings) -> Iterator[httpx.Client]:
    with api.client(new_key(settings, "site-hostile")) as c:
        yield c


@pytest.fixture(scope="module")
def job_outcomes(client: httpx.Client, worker: Worker, phantoms: Phantoms) -> dict[str, Outcome]:
    """Upload every JobCase, submit its job, and wait for all of them (the worker pipelines them)."""
    out: dict[str, Outcome] = {}
    jobs: dict[str, str] = {}
    for case in JOB_CASES:
        r = post_study(client, case.build(phantoms))
        out[case.name] = Outcome(r.status_code, r.json())
        if r.status_code == 201:
            j = client.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "none"})
            assert j.status_code == 202, j.text
            jobs[case.name] = j.json()["job_id"]
    for name, job in jobs.items():
        out[name].status = wait_job(client, job, timeout=300)
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in JOB_CASES])
def test_accepted_hostile_study_ends_with_its_code(
    client: httpx.Client, job_outcomes: dict[str, Outcome], case: JobCase
) -> None:
    o = job_outcomes[case.name]
    assert o.upload_status == 201, (o.upload_status, o.upload_body)
    st_ = o.status
    assert st_ is not None
    assert st_["attempt"] == 1, st_  # refused once, not retried as an unexpected error
    if case.expect == "succeeded":
        assert st_["state"] == "succeeded", st_
        r = client.get(f"/v1/jobs/{st_['job_id']}/result")
        assert r.status_code == 200, r.text
        if case.check is not None:
            case.check(r.json())
    else:
        assert st_["state"] == "failed", st_
        assert st_["error"]["code"] == case.expect, st_["error"]
        r = client.get(f"/v1/jobs/{st_['job_id']}/result")
        assert r.status_code == 409 and r.json()["error"] == "job_failed"


def test_worker_keeps_serving_after_the_hostile_batch(
    client: httpx.Client, worker: Worker, job_outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    assert all(o.status is not None for o in job_outcomes.values())
    # no preprocessing process died (a BrokenProcessPool starts a new pool generation)
    assert worker.pool_generation == 1
    assert all(t.is_alive() for t in worker._threads)
    fresh = make_study(tmp_path / "after.zip", seed=64, label=1).zip_path
    r = post_study(client, fresh.read_bytes())
    assert r.status_code == 201, r.text
    job = client.post("/v1/jobs", json={"study_id": r.json()["study_id"], "explain": "none"}).json()["job_id"]
    st_ = wait_job(client, job)
    assert st_["state"] == "succeeded" and st_["attempt"] == 1, st_
    assert 0.0 <= client.get(f"/v1/jobs/{job}/result").json()["probability"] <= 1.0
