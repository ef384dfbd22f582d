"""The series picker's header scan (app/series_scan.py): what it lists, what it withholds, what it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
from dicomcraft import edit_dicom, rezip  # type: ignore[import-not-found]

from app.schemas_worklist import StudySeries
from app.series_scan import scan_series
from ml.phantom import PHI_IDENTIFIERS, make_study


def _scan(path: Path) -> dict[str, Any]:
    return scan_series(lambda dest: shutil.copyfile(path, dest))


def test_every_series_ranked_from_headers_without_identifiers(tmp_path: Path) -> None:
    src = tmp_path / "multi.zip"
    info = make_study(src, seed=4, variant="multi_series", identifiers=PHI_IDENTIFIERS)

    def leak(_: int, data: bytes) -> bytes:  # a description that carries the patient's name
        def change(ds: pydicom.Dataset) -> None:
            ds.SeriesDescription = f"CHEST {PHI_IDENTIFIERS.patient_name}"

        return edit_dicom(data, change)

    path = rezip(src, tmp_path / "leaky.zip", leak)
    body = _scan(path)
    picker = StudySeries.model_validate({"study_id": "0b4f6c2e-5d7a-4f57-9a51-3c3f0d2e9a10", **body})
    assert {s.series_uid for s in picker.series} == {s.series_uid for s in info.series}
    assert picker.selected_uid == info.primary_series_uid and picker.error is None
    assert [s.rank for s in picker.series if s.usable] == [1, 2]
    assert all(s.description == "[withheld]" for s in picker.series)
    text = json.dumps(body)
    for value in ("ZZFAKE", "PHI-ID-7F3K9Q", "19450704", "ACC-PHI-55321", "PHIREFERRER"):
        assert value not in text


def test_the_scan_decodes_no_pixels_and_loads_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "s.zip"
    make_study(path, seed=6)
    code = (
        "import shutil, sys; from app.series_scan import scan_series; "
        f"body = scan_series(lambda d: shutil.copyfile({str(path)!r}, d)); "
        "assert body['selected_uid'], body; "
        "print(sorted(m for m in ('torch', 'ml.io.decode', 'ml.preprocess') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_no_usable_series_still_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "few.zip"
    make_study(path, seed=5, variant="few_slices")
    body = _scan(path)
    assert body["selected_uid"] is None and body["error"]["code"] == "too_few_slices"
    assert [s["usable"] for s in body["series"]] == [False]
    assert "too_few_slices" in [r["code"] for r in body["series"][0]["reasons"]]


def test_unreadable_archives_answer_their_code(tmp_path: Path) -> None:
    path = tmp_path / "junk.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    body = _scan(path)
    assert body["error"]["code"] == "zip_invalid" and "series" not in body
