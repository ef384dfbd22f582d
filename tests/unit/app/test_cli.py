"""The service4ct command: phantom corpus, inspect, preprocess, error codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli import run_cli

from ml.phantom import make_study


def test_phantom_corpus_then_inspect(tmp_path: Path) -> None:
    r = run_cli(
        "phantom",
        str(tmp_path / "c"),
        "--n",
        "4",
        "--seed",
        "3",
        "--rows",
        "64",
        "--pixel-spacing",
        "6",
        "--slice-spacing",
        "5",
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "c" / "labels.csv").open()))
    assert len(rows) == 4 and sorted(int(x["label"]) for x in rows) == [0, 0, 1, 1]
    for row in rows:
        mask = nib.load(str(tmp_path / "c" / "masks" / f"{row['study_id']}.nii.gz"))
        assert (np.asarray(mask.dataobj).max() > 0) == (row["label"] == "1")
    r = run_cli("inspect", str(tmp_path / "c" / rows[0]["zip"]))
    assert r.returncode == 0, r.stderr
    assert "usable" in r.stdout and "selected:" in r.stdout


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    r = run_cli("phantom", str(tmp_path / "c"), "--n", "1", "--variant", "nope")
    assert r.returncode == 2 and "unknown variant" in r.stderr


@pytest.mark.parametrize(("variant", "code"), [("non_ct", "not_ct"), ("thick", "slice_thickness_too_large")])
def test_inspect_error_codes(tmp_path: Path, variant: str, code: str) -> None:
    info = make_study(tmp_path / "s.zip", seed=1, variant=variant)
    r = run_cli("inspect", str(info.zip_path))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {code}: ")
    r = run_cli("inspect", str(info.zip_path), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == code


def test_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    p.write_bytes(b"%PDF-1.4 not a zip")
    r = run_cli("preprocess", str(p), "-o", str(tmp_path / "o.pt"), "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "zip_invalid"


def test_real_like_study_inspect_and_preprocess(tmp_path: Path) -> None:
    """A JPEG-lossless, Siemens-style 150×512² 2 mm study (extension-less file names)."""
    info = make_study(tmp_path / "real_like.zip", seed=7, variant="real_like")
    r = run_cli("inspect", str(info.zip_path), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    sm = rep["series"][0]["summary"]
    assert sm["slices"] == 150 and sm["rows"] == 512 and sm["manufacturer"] == "SIEMENS"
    assert sm["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]
    r = run_cli("preprocess", str(info.zip_path), "-o", str(tmp_path / "t.pt"), "--size", "128", "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "t.json").read_text())
    assert meta["series_uid"] == info.primary_series_uid
    assert meta["tensor_shape"] == [1, 1, 128, 128, 128]
    # the crop excludes the air above the body (anterior-posterior axis y)
    crop = meta["crop_box_zyx"]
    extent = [b - a for a, b in zip(crop["start_zyx"], crop["stop_zyx"], strict=True)]
    assert extent[1] < meta["geometry"]["resampled"]["size"][1] - 20
